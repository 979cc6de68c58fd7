from quantomni.models.base import ArchitectureAdapter

ADAPTER = ArchitectureAdapter(
    name="flux2",
    description="FLUX.2 (dev/klein) MMDiT",
    transformer_classes=("Flux2Transformer2DModel",),
    pipeline_classes=("Flux2Pipeline",),
    sensitive_layers=(
        "time_guidance_embed.*",
        "double_stream_modulation_img.*",
        "double_stream_modulation_txt.*",
        "single_stream_modulation.*",
        "x_embedder",
        "context_embedder",
        "norm_out.linear",
        "proj_out",
    ),
    guidance_param="guidance_scale",
    negative_prompt="unsupported",
)
