data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = var.ami_ssm_parameter
}

locals {
  asg_name         = "${var.name}-workers"
  launch_hook_name = "${local.asg_name}-launch"
  drain_hook_name  = "${local.asg_name}-drain"

  # The scaling metric, as workers/autoscaler publishes it (namespace PPSD, metric BacklogPerWorker,
  # dimension AutoScalingGroupName).
  metric_namespace = "PPSD"
  metric_name      = "BacklogPerWorker"

  # GPUs per instance for common types; each GPU runs one pipeline stage.
  known_gpu_counts = {
    "g4dn.xlarge"   = 1
    "g4dn.12xlarge" = 4
    "g5.xlarge"     = 1
    "g5.2xlarge"    = 1
    "g5.12xlarge"   = 4
    "g5.24xlarge"   = 4
    "g5.48xlarge"   = 8
    "g6.xlarge"     = 1
    "g6.12xlarge"   = 4
    "g6.48xlarge"   = 8
    "g6e.xlarge"    = 1
    "g6e.12xlarge"  = 4
    "g6e.48xlarge"  = 8
    "p4d.24xlarge"  = 8
    "p5.48xlarge"   = 8
  }
  gpus    = var.gpus_per_instance != null ? var.gpus_per_instance : lookup(local.known_gpu_counts, var.instance_type, 1)
  devices = var.devices != null ? var.devices : join(",", [for i in range(local.gpus) : "cuda:${i}"])

  group_min = var.scale_to_zero ? 0 : max(var.min_size, 1)
  ami_id    = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.ami[0].insecure_value
  asg_arn   = "arn:${data.aws_partition.current.partition}:autoscaling:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.asg_name}"
  registry  = split("/", var.image_uri)[0]

  worker_env = {
    PPSD_MODEL     = var.model_id
    PPSD_S3_BUCKET = var.model_bucket_name
    PPSD_S3_PREFIX = var.model_s3_prefix
    AWS_REGION     = data.aws_region.current.name
    PPSD_DEVICES   = local.devices
    PPSD_CACHE_DIR = "/var/cache/ppsd"
    PPSD_DECODER   = var.decoder
    PPSD_MAX_BATCH = tostring(var.max_batch)
    PPSD_KV_MEMORY = var.kv_memory
    PPSD_ASG_NAME  = local.asg_name
    NODE_ENV       = "production"
  }
  drain_env = {
    AWS_REGION                 = data.aws_region.current.name
    PPSD_ASG_NAME              = local.asg_name
    PPSD_LIFECYCLE_HOOK_NAME   = local.drain_hook_name
    PPSD_DRAIN_STOP            = "docker:ppsd-worker"
    PPSD_DRAIN_TIMEOUT_SECONDS = tostring(var.drain_timeout_seconds - 30)
  }
  boot_env = {
    AWS_REGION               = data.aws_region.current.name
    PPSD_ASG_NAME            = local.asg_name
    PPSD_LAUNCH_HOOK_NAME    = local.launch_hook_name
    PPSD_REDIS_URL_PARAMETER = var.redis_url_parameter_name
    PPSD_WORKER_IMAGE        = var.image_uri
    PPSD_REGISTRY            = local.registry
  }
  # Read by the systemd units (EnvironmentFile=/etc/ppsd/image.env).
  image_env = {
    PPSD_WORKER_IMAGE = var.image_uri
    PPSD_DOCKER_LOG_ARGS = join(" ", [
      "--log-driver=awslogs",
      "--log-opt=awslogs-region=${data.aws_region.current.name}",
      "--log-opt=awslogs-group=${aws_cloudwatch_log_group.worker.name}",
    ])
  }

  systemd_dir = "${path.module}/../../../infra/systemd"
  user_data = templatefile("${path.module}/templates/user_data.sh.tftpl", {
    worker_env      = local.worker_env
    drain_env       = local.drain_env
    boot_env        = local.boot_env
    image_env       = local.image_env
    worker_unit_b64 = filebase64("${local.systemd_dir}/ppsd-worker.service")
    drain_unit_b64  = filebase64("${local.systemd_dir}/ppsd-drain-watcher.service")
    boot_unit_b64   = filebase64("${local.systemd_dir}/ppsd-boot.service")
    boot_script_b64 = filebase64("${local.systemd_dir}/ppsd-boot.sh")
  })
}

resource "aws_cloudwatch_log_group" "worker" {
  name              = "/ppsd/${var.name}/workers"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

# ---------------------------------------------------------------------------------------------------
# Identity: read the model bucket, manage its own protection and lifecycle, pull its image, read the
# Redis URL, write its logs. Nothing else: in particular no write, delete or list-all on S3.
# ---------------------------------------------------------------------------------------------------
data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name               = local.asg_name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ReadModelPackages"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${var.model_bucket_arn}/*"]
  }

  statement {
    sid       = "ListModelPackages"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [var.model_bucket_arn]
  }

  statement {
    sid    = "OwnProtectionAndLifecycle"
    effect = "Allow"
    actions = [
      "autoscaling:SetInstanceProtection",
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:RecordLifecycleActionHeartbeat",
    ]
    resources = [local.asg_arn]
  }

  statement {
    sid       = "EcrLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullWorkerImage"
    effect    = "Allow"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = ["*"]
  }

  statement {
    sid       = "ReadRedisUrl"
    effect    = "Allow"
    actions   = ["ssm:GetParameter"]
    resources = [var.redis_url_parameter_arn]
  }

  statement {
    sid       = "WriteLogs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker.arn}:*"]
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_instance_profile" "worker" {
  name = local.asg_name
  role = aws_iam_role.worker.name
  tags = var.tags
}

# ---------------------------------------------------------------------------------------------------
# Network: workers pull jobs from Redis (outbound); nothing connects to them.
# ---------------------------------------------------------------------------------------------------
resource "aws_security_group" "worker" {
  name_prefix = "${local.asg_name}-"
  description = "GPU workers: no inbound, outbound to Redis, S3 and AWS APIs"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = local.asg_name })
}

resource "aws_vpc_security_group_egress_rule" "worker_out" {
  security_group_id = aws_security_group.worker.id
  description       = "Outbound to Redis, S3 (gateway endpoint), ECR and AWS APIs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

# ---------------------------------------------------------------------------------------------------
# Launch template and group
# ---------------------------------------------------------------------------------------------------
resource "aws_launch_template" "worker" {
  name_prefix            = "${local.asg_name}-"
  description            = "ppsd GPU worker (${var.instance_type}, ${local.gpus} GPU pipeline stages)"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.worker.id, var.redis_client_security_group_id]
  user_data              = base64encode(local.user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  # IMDSv2 only. Hop limit 2 so containers on the docker bridge could reach it too (the worker runs
  # with host networking, which needs only 1).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }

  block_device_mappings {
    device_name = var.root_device_name
    ebs {
      volume_size           = var.root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = local.asg_name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = local.asg_name })
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "worker" {
  name                      = local.asg_name
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = local.group_min
  max_size                  = var.max_size
  desired_capacity          = local.group_min
  health_check_type         = "EC2"
  health_check_grace_period = var.instance_warmup_seconds
  default_instance_warmup   = var.instance_warmup_seconds
  # Workers toggle their own protection (SetInstanceProtection) while they hold a job.
  protect_from_scale_in = false
  termination_policies  = ["OldestLaunchTemplate", "OldestInstance"]
  metrics_granularity   = "1Minute"
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "WarmPoolWarmedCapacity",
    "WarmPoolPendingCapacity",
  ]

  launch_template {
    id      = aws_launch_template.worker.id
    version = aws_launch_template.worker.latest_version
  }

  dynamic "warm_pool" {
    for_each = var.warm_pool_size > 0 ? [1] : []
    content {
      pool_state                  = var.warm_pool_state
      min_size                    = var.warm_pool_size
      max_group_prepared_capacity = var.warm_pool_size
      instance_reuse_policy {
        reuse_on_scale_in = false
      }
    }
  }

  # Holds a new instance (into the warm pool or into service) until ppsd-boot.sh has fetched the Redis
  # URL and pulled the image; registered with the group so the very first instances wait too.
  initial_lifecycle_hook {
    name                 = local.launch_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    default_result       = "ABANDON"
    heartbeat_timeout    = var.launch_timeout_seconds
  }

  # Rolls new launch template versions (new model prefix, new image) across the group. Busy workers are
  # scale-in protected; the refresh waits for them instead of cutting their jobs off.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage       = 50
      instance_warmup              = var.instance_warmup_seconds
      skip_matching                = true
      scale_in_protected_instances = "Wait"
      standby_instances            = "Ignore"
    }
  }

  tag {
    key                 = "Name"
    value               = local.asg_name
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The scaling policy and the backlog publisher own the desired capacity.
    ignore_changes = [desired_capacity]
  }
}

# Termination: the instance waits in Terminating:Wait while the drain watcher stops the worker (it
# stops taking jobs, finishes or hands back the ones in flight) and then completes the action.
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = local.drain_hook_name
  autoscaling_group_name = aws_autoscaling_group.worker.name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  default_result         = "CONTINUE"
  heartbeat_timeout      = var.drain_timeout_seconds + 120
}

# Keeps (queued + running jobs) / (in-service workers x max_batch) at the target: capacity is counted in
# sequences, each worker batching max_batch of them.
resource "aws_autoscaling_policy" "backlog" {
  name                      = "${local.asg_name}-backlog-per-worker"
  autoscaling_group_name    = aws_autoscaling_group.worker.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = var.instance_warmup_seconds

  target_tracking_configuration {
    target_value     = var.target_backlog_per_worker
    disable_scale_in = false

    customized_metric_specification {
      namespace   = local.metric_namespace
      metric_name = local.metric_name
      statistic   = "Average"
      unit        = "None"

      metric_dimension {
        name  = "AutoScalingGroupName"
        value = local.asg_name
      }
    }
  }
}
