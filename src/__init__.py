"""Grounded-augmentation captioning library; importing it filters known-harmless warnings."""

from src.known_warnings import filter_known_warnings

filter_known_warnings()
