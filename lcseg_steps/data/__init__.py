"""Datasets: the registry (``registry``: name -> dataset module), the shared types
(``records``: ``ImageRecord``, ``Dataset``), the image index (``index``) and one module per
dataset: VOC 2012 (``voc``), COCO (``coco``), COCO-Stuff-27 (``cocostuff27``),
Cityscapes-27 (``cityscapes27``; their label tables: ``label_maps``), a folder of the
user's own images (``folder``) and the synthetic demo sets (``demo``, and
``demo_scene`` where every pixel has a class)."""
