from quantomni.models.base import ArchitectureAdapter

ADAPTER = ArchitectureAdapter(
    name="wan",
    description="Wan 2.x video DiT (image output = one frame)",
    transformer_classes=("WanTransformer3DModel",),
    pipeline_classes=("WanPipeline", "WanImageToVideoPipeline"),
    sensitive_layers=(
        "condition_embedder.*",  # time, text and image embedders
        "patch_embedding",
        "proj_out",
    ),
    guidance_param="guidance_scale",
    negative_prompt="native",
    call_defaults={"num_frames": 1},
    attention_dispatch="diffusers.models.transformers.transformer_wan",
)
