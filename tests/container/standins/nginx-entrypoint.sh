#!/bin/sh
# Stand-in for the official nginx image's entrypoint, the part the project uses
# (docker-entrypoint.d/20-envsubst-on-templates.sh): /etc/nginx/templates/*.template is rendered into
# /etc/nginx/conf.d/ by envsubst, substituting only variables defined in the environment.
set -eu
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
    suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
    output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
    defined_envs=$(printf '${%s} ' $(env | cut -d= -f1))
    if [ -d "$template_dir" ]; then
        find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
            relative_path=${template#"$template_dir/"}
            output_path=$output_dir/${relative_path%"$suffix"}
            mkdir -p "$(dirname "$output_path")"
            echo "$0: running envsubst on $template to $output_path"
            envsubst "$defined_envs" <"$template" >"$output_path"
        done
    fi
fi
exec "$@"
