variable "name" {
  type        = string
  description = "Name prefix; the group is <name>-workers."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the worker instances."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets the group spreads instances over (one per availability zone)."
}

variable "redis_client_security_group_id" {
  type        = string
  description = "Security group that Redis admits."
}

variable "redis_url_parameter_name" {
  type        = string
  description = "SSM SecureString parameter holding the rediss:// URL; read at boot, so the token is not in user data."
}

variable "redis_url_parameter_arn" {
  type        = string
  description = "ARN of that parameter (the only parameter the worker role may read)."
}

variable "model_bucket_name" {
  type        = string
  description = "Bucket with the model packages."
}

variable "model_bucket_arn" {
  type        = string
  description = "ARN of the model bucket; the worker role may only read it."
}

variable "model_id" {
  type        = string
  description = "Model this pool serves (PPSD_MODEL); its queue is ppsd-generate-<model_id>."
}

variable "model_s3_prefix" {
  type        = string
  description = "Prefix of the model package in the bucket (PPSD_S3_PREFIX), e.g. models/stories260K/v1."
}

variable "image_uri" {
  type        = string
  description = "Worker image (infra/docker/worker.Dockerfile) in ECR."
}

variable "instance_type" {
  type        = string
  description = "GPU instance type. One type per group: warm pools do not support mixed instances policies."
}

variable "gpus_per_instance" {
  type        = number
  description = "GPUs per instance, each running one pipeline stage; null looks it up for known types (else 1)."
}

variable "devices" {
  type        = string
  description = "PPSD_DEVICES override (e.g. cuda:0,cuda:1 or auto); null builds cuda:0..cuda:<gpus-1>."
}

variable "decoder" {
  type        = string
  description = "Default decoder (PPSD_DECODER)."
}

variable "ami_id" {
  type        = string
  description = "AMI with the NVIDIA driver, Docker and the NVIDIA container toolkit; null resolves ami_ssm_parameter."
}

variable "ami_ssm_parameter" {
  type        = string
  description = "Public SSM parameter with the AMI id used when ami_id is null (AWS Deep Learning Base OSS Nvidia Driver GPU AMI, Amazon Linux 2023)."
}

variable "root_volume_gb" {
  type        = number
  description = "Root EBS volume (gp3, encrypted): image layers plus the model package cache."
}

variable "root_device_name" {
  type        = string
  description = "Root device name of the AMI."
}

variable "min_size" {
  type        = number
  description = "Minimum workers when scale_to_zero is false (with scale_to_zero the group minimum is 0)."
}

variable "max_size" {
  type        = number
  description = "Most workers the group may run."
}

variable "scale_to_zero" {
  type        = bool
  description = "Let the group shrink to zero workers when the queue is empty (the group's min_size becomes 0)."
}

variable "warm_pool_size" {
  type        = number
  description = "Pre-initialized instances (image pulled, boot done) kept in the warm pool; 0 disables the pool."
}

variable "warm_pool_state" {
  type        = string
  description = "State of warm pool instances: Stopped (pay for EBS only) or Running."
}

variable "max_batch" {
  type        = number
  description = "Sequences a worker's engine batches and jobs it holds at once (PPSD_MAX_BATCH)."
}

variable "kv_memory" {
  type        = string
  description = "KV pool budget of a worker's engine (PPSD_KV_MEMORY); empty = the engine's default."
}

variable "target_backlog_per_worker" {
  type        = number
  description = "Target of the tracking policy: jobs (queued + running) per worker batch slot (in-service workers x max_batch)."
}

variable "instance_warmup_seconds" {
  type        = number
  description = "Seconds from launch until a new worker counts toward the metric (boot, model pull, warm-up)."
}

variable "launch_timeout_seconds" {
  type        = number
  description = "How long the launch lifecycle hook waits for the bootstrap before abandoning the instance."
}

variable "drain_timeout_seconds" {
  type        = number
  description = "How long a terminating worker may drain (finish or hand back its jobs) before it is stopped."
}

variable "log_retention_days" {
  type        = number
  description = "CloudWatch Logs retention for worker and drain-watcher logs."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
}
