"""Nuclei on a user's own images and slides: ``nucleiseg predict`` over inputs (:mod:`.run`), whole slides
(:mod:`.slides`), cohorts on a cluster (:mod:`.cohort`), output folders tied to their inputs
(:mod:`.output_folder`, :mod:`.input_identity`), which model runs (:mod:`.model_sources`) and the Python API
(:mod:`.api`: ``nucleiseg.segment``)."""
