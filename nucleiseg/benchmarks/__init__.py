"""``nucleiseg benchmark`` and ``benchmark-slide``: per-configuration inference and training speed
(:mod:`.configurations`), the one-GPU suite (:mod:`.suite`), whole-slide throughput (:mod:`.slide`) and their
tables (:mod:`.output`)."""
