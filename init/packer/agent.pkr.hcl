# slipway agent AMI: Debian 12 with Docker and the slipway agent (binary,
# systemd units, user) installed but not started; the instances' cloud-init
# user-data (init/cloud-init/agent.yaml, SLIPWAY_AGENT_SOURCE=ami) writes the
# configuration and starts it.
#
#   make static                      # build/cross/x86_64/slipway-agent (cross/)
#   init/bundle.sh build/cross/x86_64/slipway-agent build/slipway-agent-bundle.tar.gz
#   packer build -var agent_bundle=build/slipway-agent-bundle.tar.gz init/packer/agent.pkr.hcl
#   (Graviton: make static ARCH=aarch64, and -var arch=arm64)
#
# Written for Packer 1.6 (Debian's packer), whose amazon-ebs builder is built
# in and which does not know `required_plugins`. Packer >= 1.10 needs the
# Amazon plugin installed once: `packer plugins install github.com/hashicorp/amazon`.
# AWS credentials come from the usual places (environment, profile, instance role).

variable "region" {
  type        = string
  default     = "eu-west-1"
  description = "Region the AMI is built in (copy it to others with ami_regions)"
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64 (Graviton); the bundle must hold the matching static agent"
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance type; empty: t3.small for x86_64, t4g.small for arm64"
}

variable "agent_bundle" {
  type        = string
  default     = "build/slipway-agent-bundle.tar.gz"
  description = "The agent bundle made by init/bundle.sh"
}

variable "ami_name_prefix" {
  type    = string
  default = "slipway-agent"
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Other regions to copy the AMI to"
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance (empty: the default VPC)"
}

locals {
  # Debian's official images (account 136693071363).
  debian_arch   = var.arch == "arm64" ? "arm64" : "amd64"
  instance_type = var.instance_type != "" ? var.instance_type : (var.arch == "arm64" ? "t4g.small" : "t3.small")
  stamp         = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "agent" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = "admin"
  ami_name      = "${var.ami_name_prefix}-${var.arch}-${local.stamp}"
  ami_regions   = var.ami_regions

  source_ami_filter {
    filters = {
      name                = "debian-12-${local.debian_arch}-*"
      architecture        = var.arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"]
    most_recent = true
  }

  # IMDSv2 with a hop limit of 1 (containers must not read the user-data,
  # which holds the bootstrap token) is set in the ASG's launch template:
  # Packer 1.6's amazon-ebs knows neither metadata_options nor imds_support.

  tags = {
    Name         = "${var.ami_name_prefix}-${var.arch}"
    "slipway:os" = "debian-12"
  }
}

build {
  sources = ["source.amazon-ebs.agent"]

  provisioner "file" {
    source      = var.agent_bundle
    destination = "/tmp/slipway-agent-bundle.tar.gz"
  }

  provisioner "shell" {
    execute_command = "sudo -E sh -eu '{{ .Path }}'"
    inline = [
      "export DEBIAN_FRONTEND=noninteractive",
      "cloud-init status --wait >/dev/null || true",
      "apt-get update -q",
      "apt-get install -y -q --no-install-recommends docker.io ca-certificates curl",
      "systemctl enable docker.service",
      # The agent: binary, units, user (group docker), upgrade script; not started.
      "mkdir -p /usr/local/lib/slipway",
      "tar -xzf /tmp/slipway-agent-bundle.tar.gz -C /usr/local/lib/slipway",
      "sh /usr/local/lib/slipway/slipway-agent/install-agent.sh",
      "/usr/local/bin/slipway-agent version",
      # An image leaves no trace of this build: fresh cloud-init state and
      # machine id on the first boot of every instance.
      "rm -f /tmp/slipway-agent-bundle.tar.gz",
      "apt-get clean",
      "cloud-init clean --logs",
      "truncate -s 0 /etc/machine-id",
    ]
  }
}
