"""The diffusion side of CasTex: x0-form SDS with a DeepFloyd-IF cascade (or its tiny offline twin).

Heavy imports (diffusers, transformers) happen inside the loaders, so importing this package is cheap.
"""

from core.guidance.cascade import StageModel, load_stage
from core.guidance.guidance import Guidance, SDSGuidance
from core.guidance.prompts import EmbeddingCache, PromptEmbeds, PromptEncoder, encode_prompts, encoder_id_for
from core.guidance.schedule import sample_timesteps, timestep_range
from core.guidance.sds import cfg, eps_form_grad, predict_x0, sds_weight, sds_x0_loss
from core.guidance.tiny import write_tiny_cascade

__all__ = [
    "EmbeddingCache",
    "Guidance",
    "PromptEmbeds",
    "PromptEncoder",
    "SDSGuidance",
    "StageModel",
    "cfg",
    "encode_prompts",
    "encoder_id_for",
    "eps_form_grad",
    "load_stage",
    "predict_x0",
    "sample_timesteps",
    "sds_weight",
    "sds_x0_loss",
    "timestep_range",
    "write_tiny_cascade",
]
