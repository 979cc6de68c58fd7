from quantomni.models.base import ArchitectureAdapter

ADAPTER = ArchitectureAdapter(
    name="flux",
    description="FLUX.1 (dev/schnell) MMDiT",
    transformer_classes=("FluxTransformer2DModel",),
    pipeline_classes=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    sensitive_layers=(
        "time_text_embed.*",  # timestep / guidance / pooled-text embedders
        "x_embedder",
        "context_embedder",
        "*.norm1.linear",  # AdaLN modulation of double blocks
        "*.norm1_context.linear",
        "single_transformer_blocks.*.norm.linear",
        "norm_out.linear",
        "proj_out",  # final projection (top level only; single blocks' proj_out is quantized)
    ),
    guidance_param="guidance_scale",  # distilled guidance embedding
    negative_prompt="true_cfg",
    attention_dispatch="diffusers.models.transformers.transformer_flux",
)
