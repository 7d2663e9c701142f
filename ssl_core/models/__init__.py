"""Backbones (encoders) and heads, kept separate so any method can pair with any backbone."""
from ssl_core.models.backbones import Backbone, build_backbone
from ssl_core.models.heads import Classifier, mlp

__all__ = ["Backbone", "build_backbone", "Classifier", "mlp"]
