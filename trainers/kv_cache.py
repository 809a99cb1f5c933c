"""The KV cache decoding writes into: buffers with room for every token still to come, filled in place.

transformers' `DynamicLayer.update` concatenates the whole cache with each new token, copying it once per decoding
step (quadratic in the response length); `RoomyLayer` subclasses it to write in place instead
(`python -m benchmarks.profile_step` shows the concatenation among a step's operators). Only plain per-layer
key/value caches (`DynamicLayer`) are replaced; a model with another cache keeps its own.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class RoomyLayer(DynamicLayer):
    """A key/value cache layer whose buffers have their final size; the filled part is exposed as a view."""

    def __init__(self, keys_buffer: Tensor, values_buffer: Tensor, length: int) -> None:
        """`*_buffer`: [B, H, capacity, D], of which the first `length` positions are filled."""
        super().__init__()
        self._keys, self._values = keys_buffer, values_buffer
        self.length, self.device, self.is_initialized = length, keys_buffer.device, True
        self.keys, self.values = keys_buffer[:, :, :length], values_buffer[:, :, :length]

    @classmethod
    def holding(cls, keys: Tensor, values: Tensor, capacity: int) -> "RoomyLayer":
        """A layer holding copies of `keys` / `values` [B, H, L, D] in buffers of `capacity` positions."""
        b, h, length, d = keys.shape
        k_buf = keys.new_empty(b, h, max(capacity, length), d)
        v_buf = values.new_empty(b, values.size(1), max(capacity, length), values.size(3))
        k_buf[:, :, :length], v_buf[:, :, :length] = keys, values
        return cls(k_buf, v_buf, length)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        end = self.length + key_states.size(-2)
        if end > self._keys.size(2):  # more than promised: grow like a DynamicLayer would
            self._keys = torch.cat([self._keys[:, :, :self.length], key_states], dim=-2)
            self._values = torch.cat([self._values[:, :, :self.length], value_states], dim=-2)
        else:
            self._keys[:, :, self.length:end] = key_states
            self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def with_room(cache: DynamicCache, extra: int) -> DynamicCache:
    """`cache` with its plain layers replaced by `RoomyLayer`s that can take `extra` more tokens in place."""
    layers = getattr(cache, "layers", None)
    if layers and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers):
        cache.layers = [RoomyLayer.holding(layer.keys, layer.values, layer.keys.size(2) + extra) for layer in layers]
    return cache


class GroupedPrefillCache:
    """The caches of prompts read a group of rows at a time, laid out as one left-padded batch of `width`
    positions would have left them, in buffers with `room` more positions per layer."""

    def __init__(self, batch: int, width: int, room: int) -> None:
        self.batch, self.width, self.room = batch, width, room
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    def add(self, rows: Tensor, start: int, part: DynamicCache) -> bool:
        """Copy `part` (the cache of `rows`, read from column `start` on) into place; False, copying nothing, when
        it is not a plain per-layer key/value cache."""
        layers = getattr(part, "layers", None)
        if not layers or not all(type(layer) is DynamicLayer for layer in layers):
            return False
        if not self.keys:  # the whole batch's buffers, with room for what decoding will add
            for layer in layers:
                k, v = layer.keys, layer.values
                self.keys.append(k.new_zeros(self.batch, k.size(1), self.width + self.room, k.size(3)))
                self.values.append(v.new_zeros(self.batch, v.size(1), self.width + self.room, v.size(3)))
        for i, layer in enumerate(layers):
            self.keys[i][rows, :, start:self.width] = layer.keys
            self.values[i][rows, :, start:self.width] = layer.values
        return True

    def cache(self) -> DynamicCache:
        cache = DynamicCache()
        cache.layers = [RoomyLayer(k, v, self.width) for k, v in zip(self.keys, self.values)]
        return cache
