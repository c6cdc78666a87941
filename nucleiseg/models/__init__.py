"""Models: the paper's plain U-Nets, smp encoders, the factory and the LightningModule."""
