"""editx: batch audio editing with Step-Audio-EditX."""

__version__ = "0.1.0"
