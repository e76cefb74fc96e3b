"""Peewee models kept in the node's sqlite database."""

from beiran.models.base import BaseModel, database
from beiran.models.blob import Blob, BlobRef, RestrictedBlob
from beiran.models.node import Node, NodeStatus

CORE_MODELS = [Node, Blob, BlobRef, RestrictedBlob]

__all__ = ["CORE_MODELS", "BaseModel", "Blob", "BlobRef", "Node", "NodeStatus", "RestrictedBlob", "database"]
