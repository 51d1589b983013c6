"""Evaluation: reconstructions per token count, their error table, image grids."""
from flextok_jax.evaluate.grid import grid_image, save_labelled_grid, save_png
from flextok_jax.evaluate.reconstruct import (
    evaluate_run,
    format_error_table,
    held_out_images,
    reconstruct_by_k,
    reconstruction_errors,
    save_loss_curve,
    save_reconstructions,
)
from flextok_jax.model.flextok import token_budgets

__all__ = [
    "evaluate_run",
    "format_error_table",
    "grid_image",
    "held_out_images",
    "reconstruct_by_k",
    "reconstruction_errors",
    "save_labelled_grid",
    "save_loss_curve",
    "save_png",
    "save_reconstructions",
    "token_budgets",
]
