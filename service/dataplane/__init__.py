"""The transport-free data plane: :class:`plane.DataPlane` over plain :mod:`types` objects."""
