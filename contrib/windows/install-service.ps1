<#
.SYNOPSIS
Installs p2pnc as a Windows service (or removes it).

.DESCRIPTION
Registers "p2pnc.exe --service --config CONFIG COMMAND" with the service control manager:
started at boot, run as LOCAL SERVICE, restarted 5 s after a failure (twice, then after a
minute). The service reads its settings from CONFIG (keys are the command's long flags, see
expose.toml next to this script) and appends its log to p2pnc-COMMAND.log in the same folder.
The folder is made readable and writable by the service and administrators only, since the
config holds the service secret.

Run from an elevated PowerShell.

.EXAMPLE
.\install-service.ps1 -Exe "C:\Program Files\p2pnc\p2pnc.exe" -Config C:\ProgramData\p2pnc\expose.toml

.EXAMPLE
.\install-service.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    # The service's name.
    [string]$Name = "p2pnc-expose",
    # The p2pnc command the service runs.
    [ValidateSet("expose", "server")]
    [string]$Command = "expose",
    # Path of p2pnc.exe (default: next to this script).
    [string]$Exe = (Join-Path $PSScriptRoot "p2pnc.exe"),
    # Path of the command's config file.
    [string]$Config = (Join-Path $env:ProgramData "p2pnc\expose.toml"),
    # Account the service runs as.
    [string]$Account = "NT AUTHORITY\LocalService",
    # Remove the service instead.
    [switch]$Uninstall,
    # Register the service without starting it.
    [switch]$NoStart
)
$ErrorActionPreference = "Stop"

function Invoke-Sc {
    & sc.exe @args | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "sc.exe $($args -join ' ') failed with code $LASTEXITCODE" }
}

$existing = Get-Service -Name $Name -ErrorAction SilentlyContinue
if ($Uninstall) {
    if (-not $existing) { Write-Host "no service named $Name"; return }
    if ($existing.Status -ne "Stopped") { Stop-Service -Name $Name -Force }
    Invoke-Sc delete $Name
    Write-Host "removed the service $Name"
    return
}
if ($existing) { throw "a service named $Name exists already (remove it with -Uninstall)" }

$Exe = (Resolve-Path $Exe).Path
$Config = (Resolve-Path $Config).Path
$dir = Split-Path -Parent $Config

# The config holds the secret, and the service writes its log next to it.
& icacls.exe $dir /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "${Account}:(OI)(CI)M" | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls on $dir failed with code $LASTEXITCODE" }

New-Service -Name $Name `
    -BinaryPathName "`"$Exe`" --service --config `"$Config`" $Command" `
    -DisplayName "p2pnc $Command ($Name)" `
    -Description "p2pnc $Command; settings in $Config, log in $(Join-Path $dir "p2pnc-$Command.log")" `
    -StartupType Automatic | Out-Null
Invoke-Sc config $Name obj= $Account password= ""
# Restart after a failure: the service ends with a non-zero code when its command fails.
Invoke-Sc failure $Name reset= 86400 actions= restart/5000/restart/5000/restart/60000
Invoke-Sc failureflag $Name 1

if ($Command -eq "server") {
    # The rendezvous server takes connections; an agent (expose) does not listen on Windows.
    New-NetFirewallRule -DisplayName "p2pnc server ($Name)" -Direction Inbound -Program $Exe `
        -Protocol TCP -Action Allow | Out-Null
}
if (-not $NoStart) { Start-Service -Name $Name }
Write-Host "installed the service ${Name}: `"$Exe`" --service --config `"$Config`" $Command"
