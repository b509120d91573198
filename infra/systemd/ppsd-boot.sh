#!/bin/bash
# ppsd GPU instance boot: fetch the Redis URL, pull the worker image, then either
#  - target lifecycle state Warmed:*  -> complete the launch hook; the group stops the instance
#    (warm pool: the next start skips the image pull), or
#  - InService                        -> start the worker and the drain watcher, complete the hook.
# Any failure abandons the launch, so the group replaces the instance instead of keeping a dud.
set -euo pipefail
# shellcheck source=/dev/null
set -a; . /etc/ppsd/boot.env; set +a

IMDS=http://169.254.169.254
imds_token() { curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token"; }
TOKEN="$(imds_token)"
imds() { curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/$1"; }

INSTANCE_ID="$(imds instance-id)"
STATE="$(imds autoscaling/target-lifecycle-state || echo InService)"
echo "ppsd-boot: instance $INSTANCE_ID target state $STATE"

complete_launch() {
  aws autoscaling complete-lifecycle-action --region "$AWS_REGION" \
    --auto-scaling-group-name "$PPSD_ASG_NAME" --lifecycle-hook-name "$PPSD_LAUNCH_HOOK_NAME" \
    --instance-id "$INSTANCE_ID" --lifecycle-action-result "$1" ||
    echo "ppsd-boot: complete-lifecycle-action $1 failed (no pending launch action?)"
}
trap 'complete_launch ABANDON' ERR

# The worker environment: static part from user data, Redis URL (with its token) from SSM.
REDIS_URL="$(aws ssm get-parameter --region "$AWS_REGION" --with-decryption \
  --name "$PPSD_REDIS_URL_PARAMETER" --query Parameter.Value --output text)"
(
  umask 077
  cat /etc/ppsd/worker.env.base
  printf 'PPSD_REDIS_URL=%s\n' "$REDIS_URL"
) > /etc/ppsd/worker.env

aws ecr get-login-password --region "$AWS_REGION" |
  docker login --username AWS --password-stdin "$PPSD_REGISTRY"
docker pull --quiet "$PPSD_WORKER_IMAGE"

case "$STATE" in
  Warmed:*)
    echo "ppsd-boot: pre-initialized for the warm pool"
    ;;
  *)
    systemctl start ppsd-worker.service ppsd-drain-watcher.service
    ;;
esac
trap - ERR
complete_launch CONTINUE
