"""The embedded, procedurally generated WSSS benchmark (the project's default data set).

It ships as code: a seed and a :class:`SyntheticConfig` fix every pixel. On first use
:func:`materialise` writes it into a cache folder in the PASCAL VOC layout that
:mod:`vwl_lightning.data.voc` reads (``JPEGImages``, ``SegmentationClassAug``, ``ImageSets/Segmentation``,
``cls_labels.json``) plus a ``dataset.json`` with the class names, the generator settings and summary
statistics.

Why it exists: it is a yardstick for the VWL method, so it reproduces *by construction* the two CAM
failure modes the paper attacks.

1. **Partial activation.** Every object is a random outline (a blob or a star polygon drawn from one
   family shared by all classes, at random scale, aspect and rotation) made of three parts:

   - a *torso* (about 55-75 % of the object) whose texture is drawn from the class's allowed subset of a
     pool of body textures; each pool texture is allowed for several classes;
   - a *limb* region (the rest of the body) whose texture is drawn from the whole pool, whatever the class;
   - a small *badge* (``part_fraction_min``..``part_fraction_max`` of the object's pixels) with a
     class-unique saturated colour and pattern.

   So the badge alone names the class, while the body, which covers most of the object, is only weak
   evidence. A classifier can therefore succeed while its CAM covers only the badge.
2. **Background co-occurrence.** Each class has a typical scene (background texture). The scene of an
   image is the typical scene of its primary (largest) object with probability ``cooccurrence`` and
   one of the other scenes otherwise, so background pixels carry class evidence.

Each failure mode has a dial in [0, 1] (see :class:`SyntheticConfig`): ``part_sharing`` (1 = the bodies above,
fully shared; at s < 1 a fraction 1 - s of each body gets its class's own texture) and ``cooccurrence``
(0.8; 1 / num_scenes = none). Their defaults give the data set of the first generator, byte for byte.

On top: clutter (badge-less distractor shapes with pool textures, labelled background), 1-3 objects per
image with occlusion (the mask shows what is visible), colour/brightness jitter, Gaussian pixel noise and
JPEG compression. Masks mark a ``2 * border_radius`` px ring along every visible object outline with 255,
like VOC. Nothing here is tuned to make any method win.

Command line::

    python -m vwl_lightning.data.synthetic grid --out docs/synthetic_samples.png --rows 4 --cols 4 --seed 0
    python -m vwl_lightning.data.synthetic.cache [--cache-dir D] [--seed S]
"""

from vwl_lightning.data.synthetic.cache import dataset_root, default_cache_dir, is_complete, materialise
from vwl_lightning.data.synthetic.cli import main, sample_grid
from vwl_lightning.data.synthetic.config import (
    DATASET_JSON,
    GENERATOR_VERSION,
    SPLITS,
    SYNTHETIC_CLASS_NAMES,
    SyntheticConfig,
    class_names,
    synthetic_meta,
)
from vwl_lightning.data.synthetic.generator import (
    ObjectInfo,
    SyntheticSample,
    SyntheticWorld,
    TextureSpec,
    build_world,
    outline_ring,
    render_indexed,
    render_sample,
    sample_id,
    sample_rng,
)

__all__ = [
    "DATASET_JSON",
    "GENERATOR_VERSION",
    "ObjectInfo",
    "SPLITS",
    "SYNTHETIC_CLASS_NAMES",
    "SyntheticConfig",
    "SyntheticSample",
    "SyntheticWorld",
    "TextureSpec",
    "build_world",
    "class_names",
    "dataset_root",
    "default_cache_dir",
    "is_complete",
    "main",
    "materialise",
    "outline_ring",
    "render_indexed",
    "render_sample",
    "sample_grid",
    "sample_id",
    "sample_rng",
    "synthetic_meta",
]
