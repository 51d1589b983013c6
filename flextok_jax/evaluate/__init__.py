"""Evaluation: reconstructions per token count, image grids, and the feature networks and
metrics of the field (Inception-v3 FID / IS / precision-recall, DINOv2 and FD-DINOv2), and the
resumable rFID / gFID runner over them (``run_rfid``, ``run_gfid``; command line:
``python -m flextok_jax.evaluate rfid|gfid``)."""
from flextok_jax.evaluate.dinov2 import (
    DinoV2,
    DinoV2Config,
    cls_features,
    load_dinov2,
    dinov2_init_boxed,
    patch_features,
)
from flextok_jax.evaluate.feature_store import CorruptShardWarning, FeatureStore
from flextok_jax.evaluate.features import (
    NETWORKS,
    FeatureNetwork,
    dinov2_network,
    fmnist_network,
    get_network,
    inception_network,
)
from flextok_jax.evaluate.fid import (
    FeatureStats,
    StatsAccumulator,
    feature_statistics,
    frechet_distance,
    stats_distance,
)
from flextok_jax.evaluate.grid import grid_image, save_labelled_grid, save_png
from flextok_jax.evaluate.inception import InceptionV3FID, convert_pytorch_fid_checkpoint, load_inception
from flextok_jax.evaluate.inception_score import inception_score
from flextok_jax.evaluate.precision_recall import precision_recall
from flextok_jax.evaluate.reconstruct import (
    evaluate_run,
    format_error_table,
    held_out_images,
    reconstruct_by_k,
    reconstruction_errors,
    save_loss_curve,
    save_reconstructions,
)
from flextok_jax.evaluate.reference_batch import load_reference_batch, load_reference_stats, save_reference_batch
from flextok_jax.evaluate.report import format_table as format_fid_table
from flextok_jax.evaluate.report import plot_fid_vs_k, write_results
from flextok_jax.evaluate.runner import (
    FewSamplesWarning,
    SetSummary,
    features_of_images,
    fid_by_k,
    run_gfid,
    run_rfid,
    score,
    summarize,
)
from flextok_jax.model.flextok import token_budgets

__all__ = [
    "CorruptShardWarning",
    "DinoV2",
    "DinoV2Config",
    "FeatureNetwork",
    "FeatureStats",
    "FeatureStore",
    "FewSamplesWarning",
    "InceptionV3FID",
    "NETWORKS",
    "SetSummary",
    "StatsAccumulator",
    "cls_features",
    "dinov2_init_boxed",
    "convert_pytorch_fid_checkpoint",
    "dinov2_network",
    "evaluate_run",
    "feature_statistics",
    "features_of_images",
    "fid_by_k",
    "fmnist_network",
    "format_error_table",
    "format_fid_table",
    "frechet_distance",
    "get_network",
    "grid_image",
    "held_out_images",
    "inception_network",
    "inception_score",
    "load_dinov2",
    "load_inception",
    "load_reference_batch",
    "load_reference_stats",
    "patch_features",
    "plot_fid_vs_k",
    "precision_recall",
    "reconstruct_by_k",
    "reconstruction_errors",
    "run_gfid",
    "run_rfid",
    "save_labelled_grid",
    "save_loss_curve",
    "save_png",
    "save_reconstructions",
    "save_reference_batch",
    "score",
    "stats_distance",
    "summarize",
    "token_budgets",
    "write_results",
]
