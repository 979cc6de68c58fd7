from quantomni.models.base import ArchitectureAdapter

ADAPTER = ArchitectureAdapter(
    name="qwen-image",
    description="Qwen-Image MMDiT",
    transformer_classes=("QwenImageTransformer2DModel",),
    pipeline_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageEditPipeline"),
    sensitive_layers=(
        "time_text_embed.*",
        "img_in",
        "txt_in",
        "*.img_mod.*",  # per-block modulation
        "*.txt_mod.*",
        "norm_out.linear",
        "proj_out",
    ),
    guidance_param="true_cfg_scale",  # Qwen-Image uses true classifier-free guidance
    negative_prompt="native",
)
