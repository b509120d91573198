data "aws_caller_identity" "current" {}

locals {
  bucket_name = coalesce(var.model_bucket_name, "${var.name}-models-${data.aws_caller_identity.current.account_id}-${var.aws_region}")
  # TLS (rediss) with the AUTH token; every client uses this one URL.
  redis_url = "rediss://:${urlencode(var.redis_auth_token)}@${module.redis.primary_endpoint}:${module.redis.port}"
}

module "network" {
  source              = "./modules/network"
  name                = var.name
  vpc_cidr            = var.vpc_cidr
  az_count            = var.az_count
  enable_nat_gateway  = var.enable_nat_gateway
  interface_endpoints = var.interface_endpoints
  tags                = var.tags
}

module "redis" {
  source                  = "./modules/redis"
  name                    = var.name
  vpc_id                  = module.network.vpc_id
  subnet_ids              = module.network.private_subnet_ids
  node_type               = var.redis_node_type
  engine_version          = var.redis_engine_version
  parameter_group_family  = "redis${split(".", var.redis_engine_version)[0]}"
  replicas                = var.redis_replicas
  snapshot_retention_days = var.redis_snapshot_retention_days
  auth_token              = var.redis_auth_token
  tags                    = var.tags
}

module "model_bucket" {
  source                  = "./modules/model_bucket"
  bucket_name             = local.bucket_name
  force_destroy           = var.model_bucket_force_destroy
  noncurrent_version_days = var.model_noncurrent_version_days
  sse_kms_arn             = var.model_bucket_sse_kms_arn
  tags                    = var.tags
}

# The workers read the Redis URL at boot, so the token never appears in user data or launch templates.
resource "aws_ssm_parameter" "redis_url" {
  name        = "/${var.name}/redis-url"
  description = "rediss:// URL (with AUTH token) of the ${var.name} BullMQ Redis"
  type        = "SecureString"
  value       = local.redis_url
  tags        = var.tags
}

resource "aws_ecr_repository" "this" {
  for_each             = var.create_ecr_repositories ? toset(["api", "worker"]) : toset([])
  name                 = "${var.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }

  tags = var.tags
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each   = aws_ecr_repository.this
  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 20 most recent images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 20 }
      action       = { type = "expire" }
    }]
  })
}

module "api" {
  source                         = "./modules/api"
  name                           = var.name
  vpc_id                         = module.network.vpc_id
  subnet_ids                     = module.network.private_subnet_ids
  redis_client_security_group_id = module.redis.client_security_group_id
  image_uri                      = var.api_image_uri
  redis_url                      = local.redis_url
  models                         = [var.model_id]
  bootstrap_keys                 = var.api_bootstrap_keys
  key_secret                     = var.api_key_secret
  admin_keys                     = var.api_admin_keys
  memory_mb                      = var.api_memory_mb
  timeout_seconds                = var.api_timeout_seconds
  reserved_concurrency           = var.api_reserved_concurrency
  cors_allow_origins             = var.api_cors_allow_origins
  log_retention_days             = var.log_retention_days
  tags                           = var.tags
}

module "gpu_workers" {
  source                         = "./modules/gpu_workers"
  name                           = var.name
  vpc_id                         = module.network.vpc_id
  subnet_ids                     = module.network.private_subnet_ids
  redis_client_security_group_id = module.redis.client_security_group_id
  redis_url_parameter_name       = aws_ssm_parameter.redis_url.name
  redis_url_parameter_arn        = aws_ssm_parameter.redis_url.arn
  model_bucket_name              = module.model_bucket.bucket_name
  model_bucket_arn               = module.model_bucket.bucket_arn
  model_id                       = var.model_id
  model_s3_prefix                = var.model_s3_prefix
  image_uri                      = var.worker_image_uri
  instance_type                  = var.worker_instance_type
  gpus_per_instance              = var.worker_gpus_per_instance
  devices                        = var.worker_devices
  decoder                        = var.worker_decoder
  max_batch                      = var.worker_max_batch
  kv_memory                      = var.worker_kv_memory
  ami_id                         = var.worker_ami_id
  ami_ssm_parameter              = var.worker_ami_ssm_parameter
  root_volume_gb                 = var.worker_root_volume_gb
  root_device_name               = var.worker_root_device_name
  min_size                       = var.worker_min
  max_size                       = var.worker_max
  scale_to_zero                  = var.scale_to_zero
  warm_pool_size                 = var.warm_pool_size
  warm_pool_state                = var.warm_pool_state
  target_backlog_per_worker      = var.target_backlog_per_worker
  instance_warmup_seconds        = var.worker_warmup_seconds
  launch_timeout_seconds         = var.worker_launch_timeout_seconds
  drain_timeout_seconds          = var.worker_drain_timeout_seconds
  log_retention_days             = var.log_retention_days
  tags                           = var.tags
}

module "backlog_publisher" {
  source                         = "./modules/backlog_publisher"
  name                           = var.name
  vpc_id                         = module.network.vpc_id
  subnet_ids                     = module.network.private_subnet_ids
  redis_client_security_group_id = module.redis.client_security_group_id
  image_uri                      = var.api_image_uri
  redis_url                      = local.redis_url
  models                         = [var.model_id]
  asg_name                       = module.gpu_workers.asg_name
  asg_arn                        = module.gpu_workers.asg_arn
  metric_namespace               = module.gpu_workers.metric_namespace
  metric_name                    = module.gpu_workers.metric_name
  target_backlog_per_worker      = var.target_backlog_per_worker
  max_batch                      = var.worker_max_batch
  schedule_expression            = var.publisher_schedule
  log_retention_days             = var.log_retention_days
  tags                           = var.tags
}
