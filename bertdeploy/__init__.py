"""bertdeploy: fine-tune a BERT-family text classifier and ship it fast.

Importing the package is cheap: each stage lives in its own module and pulls in heavy
libraries (torch, transformers) only where that stage needs them.
"""

__version__ = "0.1.0"
