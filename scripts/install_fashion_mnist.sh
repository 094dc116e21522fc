#!/usr/bin/env bash
# Installs the real Fashion-MNIST (Debian package dataset-fashion-mnist, 31 MB: the four
# gzipped IDX files under /usr/share/datasets/fashion-mnist) if it is not there yet.
# `.ci/run` calls it; tests/suite/training.rs then trains on it.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
    echo "Fashion-MNIST present in $dir"
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
ls -l "$dir"
