"""Sample-quality metrics: Frechet distance, precision/recall, FID/KID via clean-fid, and the digits metric space."""

from .cleanfid_metrics import (
    MODES,
    FeatureExtractor,
    InceptionUnavailableError,
    compare_folders,
    compare_to_reference,
    fid_folders,
    folder_features,
    kernel_inception_distance,
)
from .digits_classifier import (
    DigitsClassifier,
    accuracy,
    cleanfid_extractor,
    load_or_train_digits_classifier,
    train_digits_classifier,
)
from .digits_metric import DIGITS_SHAPE, FLOOR_DRAWS, DigitsMetric, RealFloor
from .frechet import frechet_distance, frechet_distance_of_features, gaussian_fit
from .images import render_rows, save_grid, save_png_folder, save_samples_npz, to_uint8
from .knn_precision_recall import knn_radii, manifold_coverage, precision_recall
from .report import mean_and_sem, study_summary, table_markdown

__all__ = [
    "MODES",
    "FeatureExtractor",
    "InceptionUnavailableError",
    "compare_folders",
    "compare_to_reference",
    "fid_folders",
    "folder_features",
    "kernel_inception_distance",
    "DigitsClassifier",
    "DIGITS_SHAPE",
    "DigitsMetric",
    "FLOOR_DRAWS",
    "RealFloor",
    "accuracy",
    "cleanfid_extractor",
    "load_or_train_digits_classifier",
    "train_digits_classifier",
    "frechet_distance",
    "frechet_distance_of_features",
    "gaussian_fit",
    "save_grid",
    "save_png_folder",
    "to_uint8",
    "save_samples_npz",
    "render_rows",
    "mean_and_sem",
    "table_markdown",
    "study_summary",
    "knn_radii",
    "manifold_coverage",
    "precision_recall",
]
