from quantomni.models.base import ArchitectureAdapter

ADAPTER = ArchitectureAdapter(
    name="z-image",
    description="Z-Image single-stream DiT",
    transformer_classes=("ZImageTransformer2DModel",),
    pipeline_classes=("ZImagePipeline",),
    sensitive_layers=(
        "all_x_embedder.*",
        "all_final_layer.*",  # final projection and its modulation
        "t_embedder.*",
        "cap_embedder.*",
        "siglip_embedder.*",
        "*.adaLN_modulation.*",
    ),
    guidance_param="guidance_scale",
    negative_prompt="native",
)
