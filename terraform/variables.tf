# ---------------------------------------------------------------------------------------------------
# General
# ---------------------------------------------------------------------------------------------------
variable "aws_region" {
  type        = string
  description = "AWS region to deploy into (it must offer the chosen GPU instance type)."
}

variable "name" {
  type        = string
  description = "Name prefix of every resource (lowercase letters, digits, hyphens)."
  default     = "ppsd"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2-21 characters: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every resource."
  default     = {}
}

variable "log_retention_days" {
  type        = number
  description = "CloudWatch Logs retention for the API, publisher and workers."
  default     = 30
}

# ---------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------
variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC."
  default     = "10.40.0.0/16"
}

variable "az_count" {
  type        = number
  description = "Availability zones (and private subnets) to use."
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6
    error_message = "az_count must be between 2 and 6 (ElastiCache Multi-AZ needs 2)."
  }
}

variable "enable_nat_gateway" {
  type        = bool
  description = "One NAT gateway for egress to AWS APIs and ECR. Set false only with interface_endpoints covering ecr.api, ecr.dkr, logs, ssm, monitoring and autoscaling."
  default     = true
}

variable "interface_endpoints" {
  type        = list(string)
  description = "Interface VPC endpoints to create (service suffixes such as ecr.api, ecr.dkr, logs, ssm, monitoring, autoscaling)."
  default     = []
}

# ---------------------------------------------------------------------------------------------------
# Redis (ElastiCache) for BullMQ
# ---------------------------------------------------------------------------------------------------
variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type."
  default     = "cache.t4g.small"
}

variable "redis_engine_version" {
  type        = string
  description = "Redis engine version."
  default     = "7.1"
}

variable "redis_replicas" {
  type        = number
  description = "Replicas next to the primary (>= 1 enables Multi-AZ automatic failover)."
  default     = 1
}

variable "redis_snapshot_retention_days" {
  type        = number
  description = "Days of daily Redis snapshots to keep (0 disables them)."
  default     = 7
}

variable "redis_auth_token" {
  type        = string
  sensitive   = true
  description = "Redis AUTH token, 16-128 characters (letters, digits and !&#$^<>-). Pass it as TF_VAR_redis_auth_token, never in a committed file."

  validation {
    condition     = length(var.redis_auth_token) >= 16 && length(var.redis_auth_token) <= 128 && can(regex("^[A-Za-z0-9!&#$^<>-]+$", var.redis_auth_token))
    error_message = "redis_auth_token must be 16-128 characters of letters, digits and !&#$^<>-."
  }
}

# ---------------------------------------------------------------------------------------------------
# Model bucket
# ---------------------------------------------------------------------------------------------------
variable "model_bucket_name" {
  type        = string
  description = "Name of the model bucket; null derives <name>-models-<account id>-<region>."
  default     = null
}

variable "model_bucket_force_destroy" {
  type        = bool
  description = "Let terraform destroy delete the bucket with its model packages."
  default     = false
}

variable "model_noncurrent_version_days" {
  type        = number
  description = "Days to keep noncurrent object versions in the model bucket."
  default     = 90
}

variable "model_bucket_sse_kms_arn" {
  type        = string
  description = "Customer-managed KMS key ARN for the model bucket; null uses SSE-S3."
  default     = null
}

# ---------------------------------------------------------------------------------------------------
# Model served
# ---------------------------------------------------------------------------------------------------
variable "model_id" {
  type        = string
  description = "Model id the worker pool serves (PPSD_MODEL); jobs arrive on queue ppsd-generate-<model_id>."

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.model_id))
    error_message = "model_id may contain letters, digits, '.', '_' and '-'."
  }
}

variable "model_s3_prefix" {
  type        = string
  description = "Prefix of the published model package in the bucket (PPSD_S3_PREFIX), e.g. models/stories260K/v1. Change it to roll out a new model version."

  validation {
    condition     = !startswith(var.model_s3_prefix, "/") && !endswith(var.model_s3_prefix, "/")
    error_message = "model_s3_prefix must not start or end with '/'."
  }
}

# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------
variable "create_ecr_repositories" {
  type        = bool
  description = "Create the <name>/api and <name>/worker ECR repositories here (apply them first with -target, then push)."
  default     = true
}

variable "api_image_uri" {
  type        = string
  description = "ECR URI of the Lambda image (infra/docker/api.Dockerfile, target lambda); it runs both the API and the backlog publisher."
}

variable "worker_image_uri" {
  type        = string
  description = "ECR URI of the GPU worker image (infra/docker/worker.Dockerfile)."
}

# ---------------------------------------------------------------------------------------------------
# API (Lambda + function URL with response streaming)
# ---------------------------------------------------------------------------------------------------
variable "api_bootstrap_keys" {
  type        = string
  sensitive   = true
  description = "PPSD_BOOTSTRAP_KEYS (tenant:key,tenant2:key2) accepted by a fresh deployment; each key at least 32 random characters (the API refuses weaker ones). Pass as TF_VAR_api_bootstrap_keys."
}

variable "api_key_secret" {
  type        = string
  sensitive   = true
  description = "PPSD_KEY_SECRET: the server secret every stored API key hash is an HMAC with. At least 32 random characters; changing it invalidates every key. Pass as TF_VAR_api_key_secret=\"$(openssl rand -base64 32)\"."

  validation {
    condition     = length(var.api_key_secret) >= 32
    error_message = "api_key_secret must be at least 32 random characters (openssl rand -base64 32)."
  }
}

variable "api_admin_keys" {
  type        = string
  sensitive   = true
  description = "PPSD_ADMIN_KEYS: comma-separated admin API keys (each at least 32 random characters), as TF_VAR_api_admin_keys. Empty (TF_VAR_api_admin_keys=\"\"): the API creates one on its first start and prints it once to its log group (see the first_admin_key output)."
}

variable "api_memory_mb" {
  type        = number
  description = "API function memory (MB)."
  default     = 1024
}

variable "api_timeout_seconds" {
  type        = number
  description = "Longest API request including streams; clients resume longer jobs with Last-Event-ID."
  default     = 900

  validation {
    condition     = var.api_timeout_seconds >= 30 && var.api_timeout_seconds <= 900
    error_message = "api_timeout_seconds must be between 30 and 900 (the Lambda maximum)."
  }
}

variable "api_reserved_concurrency" {
  type        = number
  description = "Concurrent API executions reserved and capped (each open stream holds one); -1 leaves it unreserved."
  default     = 100
}

variable "api_cors_allow_origins" {
  type        = list(string)
  description = "Browser origins allowed by CORS on the API URL; empty disables CORS."
  default     = []
}

# ---------------------------------------------------------------------------------------------------
# GPU worker pool
# ---------------------------------------------------------------------------------------------------
variable "worker_instance_type" {
  type        = string
  description = "GPU instance type of the workers (one type per group)."
  default     = "g5.12xlarge"
}

variable "worker_gpus_per_instance" {
  type        = number
  description = "GPUs per instance (one pipeline stage each); null looks up known types."
  default     = null
}

variable "worker_devices" {
  type        = string
  description = "PPSD_DEVICES override, e.g. auto; null gives cuda:0..cuda:<gpus-1>."
  default     = null
}

variable "worker_decoder" {
  type        = string
  description = "Default decoder of the workers (PPSD_DECODER)."
  default     = "ppsd"
}

variable "worker_ami_id" {
  type        = string
  description = "Pinned worker AMI (NVIDIA driver, Docker, NVIDIA container toolkit); null follows worker_ami_ssm_parameter."
  default     = null
}

variable "worker_ami_ssm_parameter" {
  type        = string
  description = "Public SSM parameter resolving the worker AMI when worker_ami_id is null."
  default     = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
}

variable "worker_root_volume_gb" {
  type        = number
  description = "Root volume of each worker (images + model cache), GB."
  default     = 200
}

variable "worker_root_device_name" {
  type        = string
  description = "Root device name of the worker AMI."
  default     = "/dev/xvda"
}

variable "worker_min" {
  type        = number
  description = "Minimum workers when scale_to_zero is false (with scale_to_zero the group minimum is 0)."
  default     = 1
}

variable "worker_max" {
  type        = number
  description = "Most workers the pool may run."
  default     = 4

  validation {
    condition     = var.worker_max >= 1
    error_message = "worker_max must be at least 1."
  }
}

variable "scale_to_zero" {
  type        = bool
  description = "Scale the worker pool to zero instances when no job is queued or running."
  default     = true
}

variable "warm_pool_size" {
  type        = number
  description = "Stopped, pre-initialized workers kept ready in the warm pool (0 = no warm pool)."
  default     = 1
}

variable "warm_pool_state" {
  type        = string
  description = "Warm pool instance state: Stopped (EBS cost only) or Running."
  default     = "Stopped"

  validation {
    condition     = contains(["Stopped", "Running"], var.warm_pool_state)
    error_message = "warm_pool_state must be Stopped or Running."
  }
}

variable "worker_max_batch" {
  type        = number
  description = "Sequences a worker's engine batches, and the jobs it holds at once (PPSD_MAX_BATCH of the workers and of the backlog publisher: a worker's capacity)."
  default     = 16

  validation {
    condition     = var.worker_max_batch >= 1 && floor(var.worker_max_batch) == var.worker_max_batch
    error_message = "worker_max_batch must be an integer >= 1."
  }
}

variable "worker_kv_memory" {
  type        = string
  description = "KV pool budget of each worker's engine (PPSD_KV_MEMORY: bytes or 512MiB, 24GiB, 20GB); empty keeps the engine's default."
  default     = ""

  validation {
    condition     = can(regex("^([0-9]+(\\.[0-9]+)? *([KkMmGgTt][Ii]?[Bb]?|[Bb])?)?$", var.worker_kv_memory))
    error_message = "worker_kv_memory must be a byte size such as 536870912, 512MiB, 24GiB or 20GB."
  }
}

variable "target_backlog_per_worker" {
  type        = number
  description = "Scaling target: jobs (queued + running) per worker batch slot, i.e. per in-service worker x worker_max_batch (1 = every slot busy, nothing queued)."
  default     = 2

  validation {
    condition     = var.target_backlog_per_worker > 0
    error_message = "target_backlog_per_worker must be positive."
  }
}

variable "worker_warmup_seconds" {
  type        = number
  description = "Seconds a new worker needs (boot, image, model pull, warm-up) before it counts."
  default     = 600
}

variable "worker_launch_timeout_seconds" {
  type        = number
  description = "Launch lifecycle hook timeout: the bootstrap must finish within it."
  default     = 1200
}

variable "worker_drain_timeout_seconds" {
  type        = number
  description = "Seconds a terminating worker may drain its jobs (systemd TimeoutStopSec in infra/systemd is 900)."
  default     = 900

  validation {
    condition     = var.worker_drain_timeout_seconds >= 60 && var.worker_drain_timeout_seconds <= 7080
    error_message = "worker_drain_timeout_seconds must be 60-7080 (the hook adds 120 s; its maximum is 7200)."
  }
}

variable "publisher_schedule" {
  type        = string
  description = "EventBridge schedule of the backlog publisher."
  default     = "rate(1 minute)"
}
