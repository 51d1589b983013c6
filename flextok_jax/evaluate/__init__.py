"""Evaluation: reconstructions per token count and their error table (more metrics as they land)."""
from flextok_jax.evaluate.reconstruct import (
    evaluate_run,
    format_error_table,
    grid_image,
    held_out_images,
    reconstruct_by_k,
    reconstruction_errors,
    save_loss_curve,
    save_reconstructions,
    token_budgets,
)

__all__ = [
    "evaluate_run",
    "format_error_table",
    "grid_image",
    "held_out_images",
    "reconstruct_by_k",
    "reconstruction_errors",
    "save_loss_curve",
    "save_reconstructions",
    "token_budgets",
]
