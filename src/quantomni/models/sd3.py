from quantomni.models.base import ArchitectureAdapter

ADAPTER = ArchitectureAdapter(
    name="sd3",
    description="Stable Diffusion 3 / 3.5 MMDiT",
    transformer_classes=("SD3Transformer2DModel",),
    pipeline_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
    sensitive_layers=(
        "time_text_embed.*",
        "pos_embed.*",
        "context_embedder",
        "*.norm1.linear",
        "*.norm1_context.linear",
        "norm_out.linear",
        "proj_out",
    ),
    guidance_param="guidance_scale",
    negative_prompt="native",
)
