"""Data sets, transforms, MixUp and few-shot sampling."""

from .base import ArrayDataset, ImageDataset, SubsetDataset, concat_datasets
from .cifar import load_cifar
from .embedded import load_digits, load_mnist5k
from .fashion import ensure_fashion_mnist, load_fashion_mnist
from .fewshot import fewshot_indices, fewshot_split, fewshot_subset
from .imagefolder import ImageFolder
from .mixup import MixUp
from .spec import DATASETS, list_datasets, load_dataset, parse_spec
from .transforms import eval_recipe, hyperrule_eval, hyperrule_train, hyperrule_transforms, normalization, train_recipe

__all__ = [
    "DATASETS", "ArrayDataset", "ImageDataset", "ImageFolder", "MixUp", "SubsetDataset", "concat_datasets",
    "ensure_fashion_mnist", "eval_recipe", "fewshot_indices", "fewshot_split", "fewshot_subset", "hyperrule_eval",
    "hyperrule_train", "hyperrule_transforms", "list_datasets", "load_cifar", "load_dataset", "load_digits",
    "load_fashion_mnist", "load_mnist5k", "normalization", "parse_spec", "train_recipe",
]
