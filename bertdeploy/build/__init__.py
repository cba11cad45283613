"""The build wing: train (finetune; with workdir and pretrained), distill, export (source, optimize, quantize,
guard), the PyTorch reference, the demo's data and model. Needs torch, transformers and Optimum (the `train`
extra), imported inside the functions that use them. May import the runtime wing; never `bertdeploy.bench`.
"""

import logging


class _NotMistral(logging.Filter):
    """transformers 4.57.3 to 4.57.6 warn of Mistral's tokenizer regex bug ("incorrect regex pattern ... will lead to
    incorrect tokenization") on loading any local tokenizer whose config.json such a version wrote, whatever its
    model: every model this tool saves. Its BERT-family tokenizers are not Mistral's; the warning is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "incorrect regex pattern" not in record.getMessage()


logging.getLogger("transformers.tokenization_utils_base").addFilter(_NotMistral())
