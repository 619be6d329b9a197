"""``penumbra.experimental``: Ray's ``ray.experimental`` names penumbra has
(``tqdm_ray``)."""

from . import tqdm_ray

__all__ = ["tqdm_ray"]
