"""Scoring models without training: ``nucleiseg evaluate`` (:mod:`.evaluate`), tuning the separation into nuclei
on validation (:mod:`.tuning`) and re-tuning a finished run (:mod:`.retune`)."""
