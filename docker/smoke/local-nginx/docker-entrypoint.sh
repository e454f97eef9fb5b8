#!/bin/sh
# The public nginx image's template step (docker-entrypoint.d/20-envsubst-on-templates.sh), for the
# local stand-in image: render $NGINX_ENVSUBST_TEMPLATE_DIR/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX into
# $NGINX_ENVSUBST_OUTPUT_DIR with envsubst, substituting only the environment variables whose names
# match $NGINX_ENVSUBST_FILTER (nginx's own $variables stay as they are), then run the command.
set -eu
template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}

# shellcheck disable=SC2016  # the ${NAME} list is for envsubst, not for this shell
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" </dev/null))
if [ -d "$template_dir" ]; then
    for template in "$template_dir"/*"$suffix"; do
        [ -f "$template" ] || continue
        output="$output_dir/$(basename "$template" "$suffix")"
        echo "docker-entrypoint.sh: rendering $template -> $output" >&2
        envsubst "$defined_envs" <"$template" >"$output"
    done
fi
exec "$@"
