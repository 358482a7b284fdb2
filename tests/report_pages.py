"""Helpers of the report page tests (test_page.py, test_report.py): an HTML collector of
a page's images, text and classes, the decoding of its PNG data URIs, and an analysis
``table.csv``."""

import base64
from html.parser import HTMLParser

import cv2
import numpy as np


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.texts, self.classes = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        if "class" in attrs:
            self.classes.append(attrs["class"])

    def handle_data(self, data):
        self.texts.append(data)


def parse_html(text):
    p = Collector()
    p.feed(text)
    p.close()
    return p


def decode_png(uri):
    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


ANALYSIS_CSV = (
    "variant,kind,clustering.feature,backbone.name,miou_mean,miou_std,n_seeds,"
    "pixel_accuracy_mean,iou/background,iou/cat\n"
    "base,method,k,dino_vits16,0.227,0.031,3,0.61,0.5,0.1\n"
    "border_k,method,k,dino_vits16,0.361,0.0125,3,0.72,0.6,0.2\n"
    "all_background,baseline,,,0.40,0.0,1,0.80,0.8,0.0\n"
    "broken,method,q,<b>x</b>,,,0,,,\n"
)
