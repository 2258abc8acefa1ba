"""m2l-ray: M2Lingual-style multilingual multi-turn instruction synthesis on Ray."""

__version__ = "0.1.0"
