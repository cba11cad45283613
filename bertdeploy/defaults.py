"""The choices and default values that the library's options and the CLI share: one constant for each.

The options dataclasses (finetune's, distill's, export's, bench's, the runtime's, predict's and serve's)
take their allowed values and defaults from here, and so do the `bertdeploy` options, so the two cannot
drift apart. No imports: the CLI reads this as it starts, before numpy, a runtime or the training stack
loads, and works where only the runtime is installed. Not here: values that one module alone uses.
"""

# the runtime: the predictor, `predict` and `serve`
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
BACKENDS = (ONNXRUNTIME, OPENVINO)
AUTO = "auto"  # backend: each batch on the variant measured fastest for its size; INT8 preset: this CPU's
TRUNCATE, CHUNK = "truncate", "chunk"
LONG_TEXT = (TRUNCATE, CHUNK)  # texts over the max length: cut, or overlapping windows whose scores are averaged
LOCAL, RAY = "local", "ray"
ENGINES = (LOCAL, RAY)  # this process, or Ray (Ray Data for predict, Ray Serve for serve)
CPU_BATCH_TOKENS = 1024  # texts per model run x padded length: the fastest from 1k to 16k on 2 CPU cores
GPU_BATCH_TOKENS = 16384  # (benchmarks/predictor_speed.py)
PROVIDERS = "cpu"  # ONNX Runtime's providers, first choice first
SPINNING = True  # ONNX Runtime's threads spin a moment after each call for the next one
VERIFY = True  # check each loaded file of an export against the sha256 its manifest records
# OpenVINO's inference precision for the float parts of a graph: bf16 (where the CPU computes it natively) or f32.
# Each OpenVINO variant runs at the one export judged it at (recorded in the manifest); these override it.
BF16, F32 = "bf16", "f32"
PRECISIONS = (BF16, F32)
INPUT_FORMATS = ("csv", "tsv", "jsonl", "text")  # text: one per line
OUTPUT_FORMATS = ("csv", "tsv", "jsonl")

# serve
HOST, PORT = "127.0.0.1", 8000
SERVE_MAX_BATCH_SIZE = 64  # texts of concurrent requests batched together
MAX_WAIT_MS = 5.0  # how long a batch waits for more texts
MAX_QUEUE = 1024  # local: texts waiting to be batched before requests are refused
MAX_TEXTS_PER_REQUEST = 256
MAX_BODY_BYTES = 1_000_000
# local: limits on one request and on shutdown, in seconds (docs/serve.md says why these values)
REQUEST_TIMEOUT = 30.0  # from the request's arrival to its answer; then 504, and its texts leave the queue
BODY_TIMEOUT = 10.0  # for the whole body to arrive; then 408, and the connection closes
MAX_CONCURRENT_REQUESTS = 2048  # requests being answered at once (health checks and /metrics aside); then 503
DRAIN_DELAY = 5.0  # after SIGTERM: readiness fails, requests are still served, then the listener closes
DRAIN_TIMEOUT = 30.0  # then the requests in flight get this long to finish
REPLICAS = MIN_REPLICAS = 1  # ray
TARGET_ONGOING_REQUESTS = 2.0  # ray: what autoscaling aims at per replica
MAX_ONGOING_REQUESTS = 32  # ray: requests one replica holds at once
MAX_QUEUED_REQUESTS = 1024  # ray: requests waiting for a replica before Serve refuses more

# finetune; distill passes the same training settings on, with its own epochs and learning rate
TEXT_COLUMN, LABEL_COLUMN = "text", "label"
LABEL_SEPARATOR = "|"  # joins the labels of a multi-label cell
MAX_LENGTH = 128  # tokens; longer texts are truncated
VAL_SPLIT = 0.1  # the share of the training rows held out when there is no eval file
EPOCHS = 3.0
BATCH_SIZE = 16
LEARNING_RATE = 2e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
SEED = 42

# distill; epochs and learning rate chosen by benchmarks/distill_defaults.py (docs/distill.md says what won)
DISTILL_EPOCHS = 5.0
DISTILL_LEARNING_RATE = 1e-4
TEMPERATURE = 2.0  # softens both distributions in the KL term
ALPHA = 0.5  # the soft targets' share of the loss on labelled rows
# distill --static: model2vec's usual 256 dimensions; a static student trains far faster per step and needs a larger
# learning rate and more epochs (model2vec's own classifier: Adam at 1e-3 until the validation loss stalls)
STATIC_DIMS = 256
STATIC_EPOCHS = 20.0
STATIC_LEARNING_RATE = 1e-3

# export and bench
DEVICES = ("cpu", "cuda")  # what export builds on and bench times on (predict and serve take providers)
DEVICE = "cpu"
MAX_ACCURACY_DROP = 1.0  # points of accuracy a variant (or a student) may lose against its reference
EVAL_SAMPLES = 2000  # eval texts scored: a stratified sample of larger sets
OPTIMIZATION_LEVELS = ("O1", "O2", "O3", "O4")  # as Optimum named them; O4 is fp16, for GPUs
# PyTorch's exporters: the TorchScript tracer, or torch.export (its graphs fuse less: docs/export.md)
TORCHSCRIPT, DYNAMO = "torchscript", "dynamo"
EXPORTERS = (TORCHSCRIPT, DYNAMO)
EXPORTER = TORCHSCRIPT
QUANTIZATIONS = ("int8", "int8-static", "fp16", "int8-ov")
NO_QUANTIZATION = "none"  # export's quantize: fp32 only
QUANT_PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64")  # the CPU the INT8 kernels target
PER_CHANNEL = True  # INT8 weight scales per output channel, else per tensor
CALIBRATION_SAMPLES = 300
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # ONNX Runtime's names
CALIBRATION_METHOD = "minmax"
BENCH_BATCH_SIZES = (1, 8, 32)
BENCH_SEQ_LENGTHS = (32, 128)  # tokens
BENCH_RUNS = 100  # timed calls per engine and cell
BENCH_WARMUP = 10
RECORD_ROUTES = True  # bench writes the fastest variant per size into the manifest, for backend auto
