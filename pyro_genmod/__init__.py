"""pyro-genmod: a model zoo of deep generative models on Pyro.

Models are Pyro model functions for p(z) p(x|z); guides are interchangeable variational
families q(z|x); every pair trains through Pyro's ELBO estimators and is scored with a
per-point importance-sampled log-likelihood, its standard error and PSIS k-hat.
"""

__version__ = "0.1.0"

from ._layout import attach_sibling_packages

attach_sibling_packages(__name__)

from ._registry import (
    list_datasets,
    list_guides,
    list_models,
    register_dataset,
    register_guide,
    register_likelihood,
    register_model,
    register_objective,
)
from .datasets import Dataset, load_dataset
from .diagnose import Diagnosis, diagnose
from .errors import (
    ConfigError,
    DataError,
    GenmodError,
    KhatWarning,
    PairingError,
    RunFolderError,
    TrainingDiverged,
    UnknownNameError,
)
from .factories import create_guide, create_model, pairing_problem
from .gaps import InferenceGaps, inference_gaps
from .importance import LogLikelihood, log_importance_weights, log_likelihood
from .latents import LatentSite
from .objectives import list_objectives
from .programs import ProgramGuide, ProgramModel
from .reconstruction import interpolate, reconstruct
from .runs import load_run
from .samplers import list_samplers
from .tasks import decode, encode, fit_sampler, sample
from .train import FitResult, fit

__all__ = [
    "__version__",
    "load_dataset",
    "Dataset",
    "create_model",
    "create_guide",
    "list_models",
    "list_guides",
    "list_datasets",
    "list_objectives",
    "register_model",
    "register_guide",
    "register_dataset",
    "register_objective",
    "register_likelihood",
    "pairing_problem",
    "ProgramModel",
    "ProgramGuide",
    "fit",
    "FitResult",
    "log_likelihood",
    "log_importance_weights",
    "LogLikelihood",
    "sample",
    "encode",
    "decode",
    "fit_sampler",
    "list_samplers",
    "reconstruct",
    "interpolate",
    "diagnose",
    "Diagnosis",
    "inference_gaps",
    "InferenceGaps",
    "load_run",
    "LatentSite",
    "GenmodError",
    "UnknownNameError",
    "PairingError",
    "DataError",
    "ConfigError",
    "RunFolderError",
    "TrainingDiverged",
    "KhatWarning",
]
