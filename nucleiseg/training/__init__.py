"""Training runs: the run's lifecycle (:mod:`.run`), the assembly of its objects (:mod:`.assemble`), its identity
and folder (:mod:`.identity`), sealing and publishing (:mod:`.finish`), sweep callbacks, epoch lines, the dry
run's cost projection (:mod:`.study_cost`, :mod:`.step_timing`) and the paper's protocol check."""
