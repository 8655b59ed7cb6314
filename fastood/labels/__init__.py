"""Candidate labels for CLIP OOD detection: WordNet corpora, prompts, mining.

* :mod:`fastood.labels.corpus` -- :func:`load_corpus` presets ``"neglabel"``,
  ``"interneg"``, ``"csp"`` built from the shipped WordNet 3.0 word lists;
* :mod:`fastood.labels.prompts` -- the methods' prompt templates and class names;
* :mod:`fastood.labels.mining` -- NegMining, InterNeg's criterion, CSP exclusion;
* :mod:`fastood.labels.permutation` -- group permutations read from files.
"""

from fastood.labels.corpus import (
    ADJ_LEXNAMES,
    CSP_EXCLUDE_LEXNAMES,
    CSP_SUFFIXES,
    NEGLABEL_EXCLUDE_LEXNAMES,
    NOUN_LEXNAMES,
    PRESETS,
    Corpus,
    load_corpus,
    normalize_word,
)
from fastood.labels.mining import (
    csp_exclude,
    image_prototypes,
    interneg_criterion,
    mine_interneg,
    mine_neglabel,
    quantile_similarity,
)
from fastood.labels.permutation import check_permutation, load_permutation
from fastood.labels.prompts import (
    CMA_TEST_TEMPLATE,
    CMA_TRAIN_TEMPLATE,
    CSP_ADJ_TEMPLATES,
    CSP_NOUN_TEMPLATES,
    INTERNEG_ADJ_TEMPLATE,
    INTERNEG_ID_TEMPLATE,
    INTERNEG_NOUN_TEMPLATE,
    MCM_TEMPLATE,
    NEGLABEL_ADJ_TEMPLATE,
    NEGLABEL_ID_TEMPLATE,
    NEGLABEL_NOUN_TEMPLATE,
    PLP_TEMPLATES,
    clip_imagenet_templates,
    format_prompts,
    imagenet1k_classnames,
    load_classnames,
)

__all__ = [
    "Corpus", "load_corpus", "normalize_word", "PRESETS", "NOUN_LEXNAMES", "ADJ_LEXNAMES",
    "NEGLABEL_EXCLUDE_LEXNAMES", "CSP_EXCLUDE_LEXNAMES", "CSP_SUFFIXES",
    "mine_neglabel", "quantile_similarity", "image_prototypes", "interneg_criterion",
    "mine_interneg", "csp_exclude", "load_permutation", "check_permutation",
    "NEGLABEL_ID_TEMPLATE", "NEGLABEL_NOUN_TEMPLATE", "NEGLABEL_ADJ_TEMPLATE",
    "INTERNEG_ID_TEMPLATE", "INTERNEG_NOUN_TEMPLATE", "INTERNEG_ADJ_TEMPLATE",
    "MCM_TEMPLATE", "CMA_TRAIN_TEMPLATE", "CMA_TEST_TEMPLATE", "PLP_TEMPLATES",
    "CSP_NOUN_TEMPLATES", "CSP_ADJ_TEMPLATES",
    "clip_imagenet_templates", "imagenet1k_classnames", "load_classnames", "format_prompts",
]
