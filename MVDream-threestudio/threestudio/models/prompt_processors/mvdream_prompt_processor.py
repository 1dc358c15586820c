"""The prompt processor of the MVDream configs.

Registered as ``stable-diffusion-prompt-processor`` (the name MVDream-threestudio's configs
use: there it runs the SD2.1 CLIP text encoder from Hugging Face) and as
``mvdream-prompt-processor``. Here the embeddings come from the text encoder inside the
MVDream checkpoint (the same OpenCLIP ViT-H text tower SD2.1 uses), which the system hands
in together with its cache key:

    guidance = threestudio.find(cfg.guidance_type)(cfg.guidance)
    processor = threestudio.find(cfg.prompt_processor_type)(
        cfg.prompt_processor, text_encoder=guidance.encode_text, cache_key=guidance.text_encoder_key)
    prompt_utils = processor()
"""
from dataclasses import dataclass

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessor


@threestudio.register("mvdream-prompt-processor")
@threestudio.register("stable-diffusion-prompt-processor")
class MVDreamPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        pass

    cfg: Config
