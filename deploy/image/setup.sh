#!/bin/sh
# Runs inside the image build (bentofile.yaml: docker.setup_script), as root, after the Python packages.
# BentoML creates $BENTOML_HOME/{bentos,models,envs,tmp} whenever it is imported. On the pod's read-only
# root it cannot, and the server stops before it starts; made here, empty, it only finds them. Nothing is
# written to them at run time: the bento and its model are read from $BENTO_PATH.
set -eu
mkdir -p "$BENTOML_HOME/bentos" "$BENTOML_HOME/models" "$BENTOML_HOME/envs" "$BENTOML_HOME/tmp"
