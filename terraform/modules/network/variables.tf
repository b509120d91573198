variable "name" {
  type        = string
  description = "Name prefix for every resource in the network."
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC."
}

variable "az_count" {
  type        = number
  description = "Number of availability zones to spread the private subnets (and the worker pool) over."
}

variable "enable_nat_gateway" {
  type        = bool
  description = "Create one NAT gateway (in a small public subnet) for egress from the private subnets to AWS APIs and ECR."
}

variable "interface_endpoints" {
  type        = list(string)
  description = "AWS services to reach through interface VPC endpoints instead of the NAT gateway, e.g. [\"ecr.api\", \"ecr.dkr\", \"logs\", \"ssm\", \"monitoring\", \"autoscaling\"]."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
}
