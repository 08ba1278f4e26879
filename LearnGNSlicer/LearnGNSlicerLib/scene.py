"""Leave the scene as it was: remove the nodes a block of code added.

Used for temporary nodes (labelmaps exported from segmentations) and to roll back output nodes
when loading results fails, so a failed or cancelled run leaves no half-made nodes behind.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Set


def node_ids(scene) -> Set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def remove_nodes_added_since(scene, before: Set[str]) -> List[str]:
    """Remove every node whose ID is not in ``before``, newest first; return the removed IDs."""
    added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
    added = [node for node in added if node.GetID() not in before]
    for node in reversed(added):
        scene.RemoveNode(node)
    return [node.GetID() for node in added]


@contextmanager
def temporary_nodes(scene) -> Iterator[None]:
    """Remove all nodes added inside the block when it ends, however it ends."""
    before = node_ids(scene)
    try:
        yield
    finally:
        remove_nodes_added_since(scene, before)


@contextmanager
def rollback_on_error(scene) -> Iterator[None]:
    """Remove the nodes added inside the block only if it raises."""
    before = node_ids(scene)
    try:
        yield
    except BaseException:
        remove_nodes_added_since(scene, before)
        raise
