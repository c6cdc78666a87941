"""The models nucleiseg ships and knows by name (see registry.json and nucleiseg.models.zoo)."""
