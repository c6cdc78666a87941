"""The Hydra configuration: composing ``conf/`` outside ``train.py`` (:mod:`.compose`), the values a user types
checked before anything heavy is imported (:mod:`.checks`), config nodes made into settings objects from their
``_target_`` (:mod:`.settings`) and plain containers (:mod:`.plain`). Above :mod:`nucleiseg.util` only."""
