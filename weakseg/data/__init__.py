"""Datasets (synthetic, VOC, COCO, YOLO-seg, folder), image loading, label files, pair sampling."""
