"""Weights: state dicts (read, clean, compare, load: `state_dict`) and named sources (download,
cache, preprocessing, class names: `sources`)."""
from .sources import (DEFAULTS, SCHEMES, SOURCES, Preprocess, WeightSource, WeightsUnavailableError, apply_preprocess,
                      download, get_source, imagenet_classes, imagenet_wnids, is_named, load_pretrained,
                      model_from_weights, resolve, sha256_of, weights_dir, weights_meta)
from .state_dict import HEAD_PREFIX, PREFIXES, WeightsError, clean_keys, compare_state_dicts, load_weights, \
    read_state_dict

__all__ = ["DEFAULTS", "HEAD_PREFIX", "PREFIXES", "SCHEMES", "SOURCES", "Preprocess", "WeightSource", "WeightsError",
           "WeightsUnavailableError", "apply_preprocess", "clean_keys", "compare_state_dicts", "download",
           "get_source", "imagenet_classes", "imagenet_wnids", "is_named", "load_pretrained", "load_weights",
           "model_from_weights", "read_state_dict", "resolve", "sha256_of", "weights_dir", "weights_meta"]
