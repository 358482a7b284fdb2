"""Datasets: the image index (``index``), VOC 2012 (``voc``), COCO (``coco``) and the
synthetic demo set (``demo``)."""
